//! [`RawWaitSet`]: what can be attached, and the wait loop.

use std::fmt;
use std::time::{Duration, Instant};

use super::{sleep_on, Words};
use crate::fork::UsedAfterFork;
use crate::futex::{self, Futex, WaitManyError, MAX_WAIT_MANY};
use crate::named::RawEvent;
use crate::pool::PoolSubscriber;
use crate::queue::RawQueue;
use crate::sync::EventMode;
use crate::time::Deadline;
use crate::topic::RawSubscriber;

/// Most attachments that sleep on a futex word (subscribers, queues, events) one set holds: the
/// kernel's limit for `futex_waitv`. Deadlines and intervals do not count.
///
/// # Examples
///
/// ```
/// assert_eq!(shmbus_core::waitset::MAX_ATTACHMENTS, 128);
/// ```
pub const MAX_ATTACHMENTS: usize = MAX_WAIT_MANY;

/// How often at most a sleeping set wakes to look for dead peers (publishers of its topics,
/// participants of its queues), as blocked receivers do.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Something a [`RawWaitSet`] can wait on.
///
/// # Examples
///
/// ```
/// use shmbus_core::waitset::{RawWaitSet, Source};
/// use std::time::{Duration, Instant};
///
/// let mut set = RawWaitSet::new()?;
/// set.attach(Source::Deadline(Instant::now() + Duration::from_secs(1)))?;
/// set.attach(Source::Interval(Duration::from_millis(10)))?;
/// assert_eq!(set.len(), 2);
/// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A topic's subscriber: ready when a receive would find something (a message, or a lag),
    /// disconnected when every publisher it saw is gone and nothing is left to read.
    Subscriber(&'a RawSubscriber),
    /// An array topic's subscriber, as [`Source::Subscriber`].
    Pool(&'a PoolSubscriber),
    /// A work queue's consumer: ready when an item is waiting, disconnected when the queue is
    /// closed and drained.
    Queue(&'a RawQueue),
    /// An event: ready while a manual-reset event is set; an auto-reset event's set is consumed
    /// by the wait that reports it (this set is then the one waiter it let through).
    Event(&'a RawEvent),
    /// A deadline: ready once, at or after the instant; then it is detached.
    Deadline(Instant),
    /// An interval: ready once per period (missed periods are not made up), the first period
    /// ending one period after the attach.
    Interval(Duration),
}

/// Names an attachment of a [`RawWaitSet`]. A detached attachment's key is never reused by the
/// same set.
///
/// # Examples
///
/// ```
/// use shmbus_core::waitset::{RawWaitSet, Source};
/// use std::time::Instant;
///
/// let mut set = RawWaitSet::new()?;
/// let a = set.attach(Source::Deadline(Instant::now()))?;
/// assert!(set.detach(a));
/// let b = set.attach(Source::Deadline(Instant::now()))?; // same row, new key
/// assert_ne!(a, b);
/// assert!(!set.contains(a) && set.contains(b));
/// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    index: u32,
    generation: u32,
}

/// How an attachment was found ready.
///
/// # Examples
///
/// ```
/// use shmbus_core::waitset::{RawWaitSet, Readiness, Source};
/// use std::time::{Duration, Instant};
///
/// let mut set = RawWaitSet::new()?;
/// let key = set.attach(Source::Deadline(Instant::now()))?;
/// assert_eq!(set.wait(Some(Duration::from_secs(1)))?, vec![(key, Readiness::Ready)]);
/// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Something to take: a message (or a lag report), a queue item, an event's set, a deadline
    /// or interval that passed.
    Ready,
    /// Nothing will come any more: every publisher of the subscriber's topic is gone (dead or
    /// left) and everything was read, or the queue is closed and empty.
    Disconnected,
}

/// Why a wait set could not be made, take an attachment, or wait.
///
/// # Examples
///
/// ```
/// use shmbus_core::waitset::{RawWaitSet, Source, WaitSetError};
/// use std::time::Duration;
///
/// let mut set = RawWaitSet::new()?;
/// assert_eq!(set.attach(Source::Interval(Duration::ZERO)), Err(WaitSetError::ZeroInterval));
/// # Ok::<(), WaitSetError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitSetError {
    /// The kernel lacks `futex_waitv` (Linux 5.16 or newer is needed).
    #[error("waiting on many things needs the futex_waitv system call of Linux 5.16 or newer")]
    Unsupported,
    /// The set already holds [`MAX_ATTACHMENTS`] attachments that sleep on a word.
    #[error("a wait set holds at most {max} subscribers, queues and events")]
    Full {
        /// [`MAX_ATTACHMENTS`].
        max: usize,
    },
    /// An interval of zero.
    #[error("an interval must be longer than zero")]
    ZeroInterval,
    /// The attachment was made before a fork and this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

impl From<WaitManyError> for WaitSetError {
    fn from(e: WaitManyError) -> Self {
        match e {
            WaitManyError::Unsupported => WaitSetError::Unsupported,
            // The set never passes more words than the kernel takes, nor none.
            WaitManyError::BadCount(_) => WaitSetError::Full {
                max: MAX_ATTACHMENTS,
            },
        }
    }
}

/// `at + d`, or a century after `at` if that is past what the clock can represent (an interval
/// of `Duration::MAX` is "never", not a panic).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
}

enum What<'a> {
    Subscriber {
        sub: &'a RawSubscriber,
        /// When the set last looked whether the topic's publishers are gone.
        checked: Option<Instant>,
    },
    Queue(&'a RawQueue),
    Event(&'a RawEvent),
    Timer {
        due: Instant,
        period: Option<Duration>,
    },
}

impl What<'_> {
    fn words(&self) -> Option<Words<'_>> {
        match self {
            What::Subscriber { sub, .. } => Some(sub.topic().ring().notify_words()),
            What::Queue(q) => Some(q.not_empty_words()),
            What::Event(e) => Some(e.wake_words()),
            What::Timer { .. } => None,
        }
    }

    /// A look without side effects: whether the full check would find something now. Timers
    /// and disconnection are left to the full check (the sleep ends in time for them).
    fn looks_ready(&self) -> bool {
        match self {
            What::Subscriber { sub, .. } => sub.topic().ring().ready(sub.cursor()),
            What::Queue(q) => !q.is_empty() || q.is_closed(),
            What::Event(e) => e.is_set(),
            What::Timer { .. } => false,
        }
    }
}

struct Entry<'a> {
    generation: u32,
    what: Option<What<'a>>,
}

/// One thread's wait on many subscribers, queues, events and timers at once.
///
/// # Examples
///
/// ```
/// use shmbus_core::waitset::{RawWaitSet, Readiness, Source};
/// use std::time::{Duration, Instant};
///
/// let mut set = RawWaitSet::new()?;
/// let tick = set.attach(Source::Interval(Duration::from_millis(2)))?;
/// let start = Instant::now();
/// assert_eq!(set.wait(None)?, vec![(tick, Readiness::Ready)]);
/// assert!(start.elapsed() >= Duration::from_millis(2));
/// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
/// ```
///
/// [`wait`](Self::wait) returns every attachment that is ready, so none starves another. While
/// it sleeps the set is counted in as a sleeper on each topic, queue and event, exactly as a
/// blocked receiver is, and counted out before it returns: detaching, or dropping the set,
/// leaves nothing behind. See the [module docs](super) for the protocol and an example.
pub struct RawWaitSet<'a> {
    entries: Vec<Entry<'a>>,
    /// Attachments that sleep on a word.
    sleeping: usize,
}

impl fmt::Debug for RawWaitSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawWaitSet")
            .field("attachments", &self.len())
            .finish_non_exhaustive()
    }
}

impl<'a> RawWaitSet<'a> {
    /// An empty set.
    ///
    /// # Errors
    ///
    /// [`WaitSetError::Unsupported`] if the kernel lacks `futex_waitv` (before Linux 5.16).
    ///
    /// # Examples
    ///
    /// ```
    /// let set = shmbus_core::waitset::RawWaitSet::new()?;
    /// assert!(set.is_empty());
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn new() -> Result<RawWaitSet<'a>, WaitSetError> {
        if !futex::wait_many_supported() {
            return Err(WaitSetError::Unsupported);
        }
        Ok(RawWaitSet {
            entries: Vec::new(),
            sleeping: 0,
        })
    }

    /// How many attachments the set holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::waitset::{RawWaitSet, Source};
    /// let mut set = RawWaitSet::new()?;
    /// set.attach(Source::Interval(std::time::Duration::from_secs(1)))?;
    /// assert_eq!(set.len(), 1);
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.what.is_some()).count()
    }

    /// Whether the set holds no attachment.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(shmbus_core::waitset::RawWaitSet::new()?.is_empty());
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attaches `source`; its key names it in what [`wait`](Self::wait) returns.
    ///
    /// # Errors
    ///
    /// [`WaitSetError::Full`] beyond [`MAX_ATTACHMENTS`] subscribers, queues and events;
    /// [`WaitSetError::ZeroInterval`]; [`WaitSetError::UsedAfterFork`] for a subscriber or
    /// queue made before a fork, in the child.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::waitset::{RawWaitSet, Source};
    /// let mut set = RawWaitSet::new()?;
    /// let key = set.attach(Source::Deadline(std::time::Instant::now()))?;
    /// assert!(set.contains(key));
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn attach(&mut self, source: Source<'a>) -> Result<Key, WaitSetError> {
        let what = match source {
            Source::Subscriber(sub) => {
                sub.check_fork()?;
                What::Subscriber { sub, checked: None }
            }
            Source::Pool(p) => {
                p.subscriber.check_fork()?;
                What::Subscriber {
                    sub: &p.subscriber,
                    checked: None,
                }
            }
            Source::Queue(q) => {
                q.check_fork()?;
                What::Queue(q)
            }
            Source::Event(e) => What::Event(e),
            Source::Deadline(at) => What::Timer {
                due: at,
                period: None,
            },
            Source::Interval(p) => {
                if p.is_zero() {
                    return Err(WaitSetError::ZeroInterval);
                }
                What::Timer {
                    due: later(Instant::now(), p),
                    period: Some(p),
                }
            }
        };
        let sleeps = what.words().is_some();
        if sleeps && self.sleeping >= MAX_ATTACHMENTS {
            return Err(WaitSetError::Full {
                max: MAX_ATTACHMENTS,
            });
        }
        self.sleeping += usize::from(sleeps);
        // Reuse a free row whose generation can still move on; else add a row.
        let free = self
            .entries
            .iter()
            .position(|e| e.what.is_none() && e.generation < u32::MAX);
        let index = match free {
            Some(i) => {
                let e = &mut self.entries[i];
                e.generation += 1;
                e.what = Some(what);
                i
            }
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    what: Some(what),
                });
                self.entries.len() - 1
            }
        };
        Ok(Key {
            index: u32::try_from(index).expect("fewer rows than attach calls"),
            generation: self.entries[index].generation,
        })
    }

    /// Detaches `key`; returns whether it was attached (a deadline that fired detached itself).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::waitset::{RawWaitSet, Source};
    /// let mut set = RawWaitSet::new()?;
    /// let key = set.attach(Source::Interval(std::time::Duration::from_secs(1)))?;
    /// assert!(set.detach(key) && !set.detach(key));
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn detach(&mut self, key: Key) -> bool {
        match self.entries.get_mut(key.index as usize) {
            Some(e) if e.generation == key.generation && e.what.is_some() => {
                let what = e.what.take();
                if what.is_some_and(|w| w.words().is_some()) {
                    self.sleeping -= 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Whether `key` is attached.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::waitset::{RawWaitSet, Source};
    /// use std::time::Duration;
    /// let mut set = RawWaitSet::new()?;
    /// let once = set.attach(Source::Deadline(std::time::Instant::now()))?;
    /// set.wait(Some(Duration::from_secs(1)))?; // the deadline fires and detaches itself
    /// assert!(!set.contains(once));
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn contains(&self, key: Key) -> bool {
        self.entries
            .get(key.index as usize)
            .is_some_and(|e| e.generation == key.generation && e.what.is_some())
    }

    /// Waits at most `timeout` (`None`: no limit) until at least one attachment is ready, and
    /// returns all that are, in the order they were attached (empty: the timeout passed).
    ///
    /// A subscriber whose topic has no publisher left (each one it saw is dead or gone) and
    /// nothing to read is reported [`Readiness::Disconnected`] within about 100 ms, as
    /// [`RawSubscriber::receive`] would return `Disconnected`. An auto-reset event reported
    /// ready was consumed by this wait.
    ///
    /// # Errors
    ///
    /// [`WaitSetError::Unsupported`] if the kernel refuses `futex_waitv`;
    /// [`WaitSetError::UsedAfterFork`] in a forked child.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::waitset::RawWaitSet;
    /// use std::time::Duration;
    /// let mut set = RawWaitSet::new()?;
    /// assert!(set.wait(Some(Duration::from_millis(1)))?.is_empty()); // nothing attached: timeout
    /// # Ok::<(), shmbus_core::waitset::WaitSetError>(())
    /// ```
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Vec<(Key, Readiness)>, WaitSetError> {
        let deadline = Deadline::after(timeout);
        loop {
            let ready = self.poll()?;
            if !ready.is_empty() || deadline.expired() {
                return Ok(ready);
            }
            let now = Instant::now();
            let mut slice = CHECK_EVERY;
            if let Some(r) = deadline.remaining() {
                slice = slice.min(r);
            }
            for e in &self.entries {
                if let Some(What::Timer { due, .. }) = e.what {
                    slice = slice.min(due.saturating_duration_since(now));
                }
            }
            let words: Vec<Words<'_>> = self
                .entries
                .iter()
                .filter_map(|e| e.what.as_ref().and_then(What::words))
                .collect();
            let looks_ready = || {
                self.entries
                    .iter()
                    .any(|e| e.what.as_ref().is_some_and(What::looks_ready))
            };
            if words.is_empty() {
                if !looks_ready() {
                    std::thread::sleep(slice);
                }
            } else {
                sleep_on(&words, &Futex, Some(slice), looks_ready)?;
            }
        }
    }

    /// Checks every attachment once: what is ready now. Peers are looked at every
    /// [`CHECK_EVERY`] at most (a look costs a system call per publisher).
    fn poll(&mut self) -> Result<Vec<(Key, Readiness)>, WaitSetError> {
        let now = Instant::now();
        let mut ready = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            let key = Key {
                index: i as u32,
                generation: e.generation,
            };
            let Some(what) = e.what.as_mut() else {
                continue;
            };
            let mut spent = false;
            let found = match what {
                What::Subscriber { sub, checked } => {
                    sub.check_fork()?;
                    let ring = sub.topic().ring();
                    if ring.ready(sub.cursor()) {
                        Some(Readiness::Ready)
                    } else if checked.is_none_or(|t| now.duration_since(t) >= CHECK_EVERY) {
                        *checked = Some(now);
                        // As `RawSubscriber::receive`: gone, and still nothing to read.
                        (sub.publishers_gone_cheaply() && !ring.ready(sub.cursor()))
                            .then_some(Readiness::Disconnected)
                    } else {
                        None
                    }
                }
                What::Queue(q) => {
                    q.check_fork()?;
                    q.look_for_dead();
                    if !q.is_empty() {
                        Some(Readiness::Ready)
                    } else if q.is_closed() {
                        Some(Readiness::Disconnected)
                    } else {
                        None
                    }
                }
                What::Event(ev) => {
                    let set = match ev.event_mode() {
                        EventMode::ManualReset => ev.is_set(),
                        EventMode::AutoReset => ev.try_wait(),
                    };
                    set.then_some(Readiness::Ready)
                }
                What::Timer { due, period } => {
                    if now < *due {
                        None
                    } else {
                        match period {
                            None => spent = true,
                            Some(p) => {
                                // The next period after now: missed ones are not made up.
                                let late = now.duration_since(*due).as_nanos();
                                let periods = late / p.as_nanos() + 1;
                                let ahead =
                                    p.saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX));
                                *due = later(*due, ahead);
                            }
                        }
                        Some(Readiness::Ready)
                    }
                }
            };
            if spent {
                e.what = None;
            }
            if let Some(r) = found {
                ready.push((key, r));
            }
        }
        Ok(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::TypeInfo;
    use crate::name::Name;
    use crate::primitive::Ordering;
    use crate::topic::{RawPublisher, RawTopic, TopicOptions};
    use std::sync::Arc;

    fn topic(tag: &str) -> Arc<RawTopic> {
        let name = Name::new(&format!("ut-waitset-{tag}-{}", std::process::id())).unwrap();
        let opts = TopicOptions {
            slot_size: Some(8),
            ..TopicOptions::default()
        };
        RawTopic::open_or_create(&name, &TypeInfo::pod::<u64>(), &opts).unwrap()
    }

    fn sleepers(t: &RawTopic) -> u32 {
        t.ring().notify_words().sleepers.load(Ordering::SeqCst)
    }

    #[test]
    fn a_sleeping_set_is_counted_in_and_out_of_every_topic() {
        let (t1, t2) = (topic("count1"), topic("count2"));
        let (s1, s2) = (
            RawSubscriber::new(t1.clone(), 0).unwrap(),
            RawSubscriber::new(t2.clone(), 0).unwrap(),
        );
        let mut p2 = RawPublisher::new(t2.clone()).unwrap();
        let _p1 = RawPublisher::new(t1.clone()).unwrap();
        let mut set = RawWaitSet::new().unwrap();
        let k1 = set.attach(Source::Subscriber(&s1)).unwrap();
        let k2 = set.attach(Source::Subscriber(&s2)).unwrap();
        std::thread::scope(|s| {
            let (t1, t2) = (&t1, &t2);
            s.spawn(move || {
                // Both counts go up while the set sleeps...
                let start = Instant::now();
                while sleepers(t1) == 0 || sleepers(t2) == 0 {
                    assert!(start.elapsed() < Duration::from_secs(5), "never counted in");
                    std::thread::yield_now();
                }
                let loan = p2.loan().unwrap();
                p2.slot_mut(&loan)[..8].copy_from_slice(&7u64.to_ne_bytes());
                p2.publish(loan, None).unwrap();
            });
            let ready = set.wait(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(ready, vec![(k2, Readiness::Ready)]);
        });
        // ...and are back to zero once it returned.
        assert_eq!((sleepers(&t1), sleepers(&t2)), (0, 0));
        assert!(set.detach(k1));
        assert!(!set.detach(k1));
        assert!(set.contains(k2));
        // A new attachment in the freed row gets a new key.
        let k3 = set.attach(Source::Subscriber(&s1)).unwrap();
        assert_ne!(k1, k3);
        assert!(!set.contains(k1));
        assert!(set
            .wait(Some(Duration::from_millis(1)))
            .unwrap()
            .contains(&(k2, Readiness::Ready)));
        drop(set);
        assert_eq!((sleepers(&t1), sleepers(&t2)), (0, 0));
    }

    #[test]
    fn the_set_refuses_more_than_the_kernel_waits_on() {
        let t = topic("full");
        let s = RawSubscriber::new(t, 0).unwrap();
        let mut set = RawWaitSet::new().unwrap();
        for _ in 0..MAX_ATTACHMENTS {
            set.attach(Source::Subscriber(&s)).unwrap();
        }
        assert_eq!(
            set.attach(Source::Subscriber(&s)),
            Err(WaitSetError::Full {
                max: MAX_ATTACHMENTS
            })
        );
        // Timers do not sleep on a word: they still fit.
        let tick = set
            .attach(Source::Interval(Duration::from_millis(1)))
            .unwrap();
        let start = Instant::now();
        let ready = set.wait(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ready, vec![(tick, Readiness::Ready)]);
        assert!(start.elapsed() >= Duration::from_millis(1));
        assert_eq!(
            set.attach(Source::Interval(Duration::ZERO)),
            Err(WaitSetError::ZeroInterval)
        );
        // Past what the clock can represent: never due, not a panic.
        let never = set.attach(Source::Interval(Duration::MAX)).unwrap();
        let far = set
            .attach(Source::Deadline(later(Instant::now(), Duration::MAX)))
            .unwrap();
        let ready = set.wait(Some(Duration::from_millis(5))).unwrap();
        assert!(
            ready.iter().all(|(k, _)| *k != never && *k != far),
            "{ready:?}"
        );
    }
}

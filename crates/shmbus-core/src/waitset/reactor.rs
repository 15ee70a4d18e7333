//! The process's waiter thread for async receives: one thread sleeps on the futex words of
//! everything some task awaits, and wakes the tasks' [`Waker`]s.
//!
//! A task that found nothing to take [arms](Registration::arm) a [`Registration`]: it counts
//! itself in on the word's sleeper count, fences (`SeqCst`), records the word, and hands its
//! waker to the thread; then it looks once more (the re-check of every blocked receiver, see the
//! [module docs](super)). The thread sleeps with `futex_waitv` on every word recorded, plus a
//! private word of its own that a new registration changes. When a word differs from what its
//! registration recorded, the thread counts the registration out and wakes its task, which
//! takes what came in its own poll: a task dropped between the wake and the poll loses nothing.
//!
//! So publishers see a sleeper exactly as they see a blocked `recv`, and a publish with nobody
//! waiting stays free of system calls. The thread also looks for dead peers every 50 ms (dead
//! publishers of awaited topics, dead participants of awaited queues, whose items come back) and
//! wakes the tasks whose topic lost or gained a publisher, so that they can report
//! `Disconnected`.
//!
//! The thread keeps every awaited segment mapped by holding an [`Arc`] of it while it sleeps, so
//! a leaked future never leaves it a dangling word. It holds at most
//! [`MAX_WAIT_MANY`]` - 1` distinct words in one sleep; beyond that it sleeps on the first ones
//! and looks at the rest every millisecond. On a kernel without `futex_waitv` it looks at all of
//! them every millisecond. In a forked child, a new thread is started on first use (the parent's
//! is not inherited).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::Words;
use crate::fork::Born;
use crate::futex::{Futex, Notifier, WaitManyError, MAX_WAIT_MANY};
use crate::named::RawEvent;
use crate::queue::RawQueue;
use crate::topic::RawTopic;

/// How often the thread looks for dead peers of what is awaited.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// How long a disarm waits at most for the thread to let go of the segment.
const LET_GO_WAIT: Duration = Duration::from_secs(1);

/// How often the thread looks at words it could not sleep on (beyond the kernel's limit, or on
/// a kernel without `futex_waitv`).
const POLL_EVERY: Duration = Duration::from_millis(1);

/// What a [`Registration`] waits on, kept mapped while the waiter thread looks at it.
///
/// # Examples
///
/// ```
/// use shmbus_core::named::RawEvent;
/// use shmbus_core::name::Name;
/// use shmbus_core::segment::Lifetime;
/// use shmbus_core::sync::EventMode;
/// use shmbus_core::waitset::reactor::Interest;
/// use std::sync::Arc;
///
/// let name = Name::new(&format!("doc-interest-{}", std::process::id())).unwrap();
/// let event = Arc::new(RawEvent::open_or_create(&name, EventMode::AutoReset, false, 0o600, Lifetime::Scoped)?);
/// let interest = Interest::event(event);
/// # let _ = interest;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Interest(Watched);

#[derive(Clone)]
enum Watched {
    Topic(Arc<RawTopic>),
    Queue(Arc<RawQueue>),
    Event(Arc<RawEvent>),
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = match &self.0 {
            Watched::Topic(t) => ("topic", t.name().as_str().to_owned()),
            Watched::Queue(q) => ("queue", q.name().as_str().to_owned()),
            Watched::Event(e) => ("event", e.name().as_str().to_owned()),
        };
        f.debug_struct("Interest")
            .field("kind", &kind)
            .field("name", &name)
            .finish()
    }
}

impl Interest {
    /// A topic's new messages (and its publishers coming and going), for its subscribers.
    pub fn topic(topic: Arc<RawTopic>) -> Interest {
        Interest(Watched::Topic(topic))
    }

    /// A work queue's items (and its closing), for its consumers.
    pub fn queue(queue: Arc<RawQueue>) -> Interest {
        Interest(Watched::Queue(queue))
    }

    /// An event's sets.
    pub fn event(event: Arc<RawEvent>) -> Interest {
        Interest(Watched::Event(event))
    }

    fn words(&self) -> Words<'_> {
        match &self.0 {
            Watched::Topic(t) => t.ring().notify_words(),
            Watched::Queue(q) => q.not_empty_words(),
            Watched::Event(e) => e.wake_words(),
        }
    }

    fn word_addr(&self) -> usize {
        self.words().word.as_ptr() as usize
    }

    /// Changes whenever the set of the topic's publishers changes (one joined, or the last
    /// one left or was reclaimed); constant for queues and events, whose peers' departures
    /// change their word.
    fn liveness(&self) -> u64 {
        match &self.0 {
            Watched::Topic(t) => t
                .ring()
                .publisher_joins()
                .wrapping_mul(2)
                .wrapping_add(u64::from(t.has_publisher())),
            Watched::Queue(_) | Watched::Event(_) => 0,
        }
    }

    /// Reclaims dead peers: a topic's dead publishers (which changes its liveness), a queue's
    /// dead participants (whose items come back and change its word).
    fn look_for_dead(&self) {
        match &self.0 {
            Watched::Topic(t) => {
                t.reclaim_dead_publishers();
            }
            Watched::Queue(q) => q.look_for_dead(),
            Watched::Event(_) => {}
        }
    }
}

/// One task's wait through the process's waiter thread (see the [module docs](self)).
///
/// A task polls: it tries to take; if nothing was there it calls [`arm`](Self::arm), and if
/// that returns `true` it tries once more, then [`park`](Self::park)s and returns `Pending`. Dropping the registration
/// (or [`disarm`](Self::disarm)) counts it out.
///
/// # Examples
///
/// ```
/// use shmbus_core::named::RawEvent;
/// use shmbus_core::name::Name;
/// use shmbus_core::segment::Lifetime;
/// use shmbus_core::sync::EventMode;
/// use shmbus_core::waitset::reactor::{Interest, Registration};
/// use std::sync::Arc;
/// use std::task::{Wake, Waker};
///
/// struct Flag(std::sync::atomic::AtomicBool);
/// impl Wake for Flag {
///     fn wake(self: Arc<Self>) { self.0.store(true, std::sync::atomic::Ordering::SeqCst); }
/// }
///
/// let name = Name::new(&format!("doc-registration-{}", std::process::id())).unwrap();
/// let event = Arc::new(RawEvent::open_or_create(&name, EventMode::ManualReset, false, 0o600, Lifetime::Scoped)?);
/// let flag = Arc::new(Flag(Default::default()));
/// let mut reg = Registration::new(Interest::event(event.clone()));
/// let waker = Waker::from(flag.clone());
/// assert!(reg.arm(&waker)); // newly armed: look once more
/// assert!(!event.is_set()); // still nothing: let the waiter thread watch, then return Pending
/// reg.park(&waker);
/// event.set();
/// let start = std::time::Instant::now();
/// while !flag.0.load(std::sync::atomic::Ordering::SeqCst) {
///     assert!(start.elapsed().as_secs() < 5);
///     std::thread::yield_now();
/// }
/// assert!(!reg.is_armed()); // the wake counted it out
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Registration {
    interest: Interest,
    id: Option<u64>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("interest", &self.interest)
            .field("armed", &self.is_armed())
            .finish()
    }
}

impl Registration {
    /// A registration for `interest`, not armed.
    pub fn new(interest: Interest) -> Registration {
        Registration { interest, id: None }
    }

    /// What it waits on.
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// Arms the registration to wake `waker` at the next change of the word.
    ///
    /// Returns `true` if it was newly armed: the caller must then look once more for what it
    /// waits for (what came before the arm may not wake it), and if it finds nothing call
    /// [`park`](Self::park) before it returns `Pending`.
    /// Returns `false` if it was still armed since an earlier poll (the waker is replaced):
    /// anything that came since then wakes it.
    pub fn arm(&mut self, waker: &Waker) -> bool {
        let reactor = Reactor::get();
        if let Some(id) = self.id {
            let mut inner = reactor.lock();
            if let Some(r) = inner.regs.get_mut(&id) {
                if !r.waker.will_wake(waker) {
                    r.waker.clone_from(waker);
                }
                return false;
            }
        }
        let words = self.interest.words();
        // As a blocked receiver: count in, fence, then record the word (see the module docs of
        // `waitset`); the caller's re-check comes after the fence.
        words.sleepers.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        // For topics' light publishers (decision 47). If it is refused, the waiter thread
        // re-polls every registration each `POLL_EVERY` instead (`barrier::heavy_unavailable`).
        if words.light.is_some_and(|l| l.load(Ordering::Acquire) != 0) {
            crate::barrier::heavy();
        }
        let seen = words.word.load(Ordering::Acquire);
        let liveness = self.interest.liveness();
        let id = reactor.next_id.fetch_add(1, Ordering::Relaxed);
        reactor.lock().regs.insert(
            id,
            Armed {
                interest: self.interest.clone(),
                seen,
                liveness,
                waker: waker.clone(),
                in_snapshot: None,
            },
        );
        self.id = Some(id);
        true
    }

    /// Tells the waiter thread about a newly armed registration, once the caller's re-check
    /// found nothing: the task may now return `Pending`. (A re-check that finds something
    /// disarms instead, and the thread never hears of it.)
    pub fn park(&mut self, waker: &Waker) {
        let reactor = Reactor::get();
        reactor.poke();
        if !reactor.alive.load(Ordering::Acquire) {
            // No waiter thread (it could not be started): nobody would wake the task, so it is
            // woken at once and polls again.
            self.disarm();
            waker.wake_by_ref();
        }
    }

    /// Whether it is armed: not yet woken, nor disarmed.
    pub fn is_armed(&self) -> bool {
        self.id
            .is_some_and(|id| Reactor::get().lock().regs.contains_key(&id))
    }

    /// Counts the registration out if it is armed (as dropping it does).
    pub fn disarm(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let reactor = Reactor::get();
        let removed = reactor.lock().regs.remove(&id);
        let Some(r) = removed else {
            return; // woken: the thread counted it out and let go of it
        };
        r.interest.words().sleepers.fetch_sub(1, Ordering::SeqCst);
        let in_snapshot = r.in_snapshot;
        drop(r);
        if let Some(generation) = in_snapshot {
            // The thread may be asleep holding the segment (it kept an `Arc` of it for the
            // sleep): wake it and wait until it let go, so that whoever drops the last handle
            // next really closes (and for a scoped object, removes) the segment.
            reactor.let_go(generation);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.disarm();
    }
}

struct Armed {
    interest: Interest,
    /// The word's value when the registration was armed.
    seen: u32,
    /// The interest's liveness then.
    liveness: u64,
    waker: Waker,
    /// The last snapshot of the waiter thread that holds it, if any.
    in_snapshot: Option<u32>,
}

/// What the lock guards.
struct Inner {
    regs: HashMap<u64, Armed>,
    /// The number of the thread's latest snapshot (wrapping).
    generation: u32,
}

/// The waiter thread's state: one per process generation (a forked child makes its own).
struct Reactor {
    born: Born,
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Changed (and woken) by every park and every disarm of a registration the thread holds.
    control: AtomicU32,
    /// The number of the last snapshot the thread let go of (wrapping); woken when it moves
    /// on while `letting_go` is not zero.
    released: AtomicU32,
    /// How many disarms wait for `released` to move on.
    letting_go: AtomicU32,
    /// Whether the thread was started (it starts on the first park).
    started: std::sync::Once,
    /// Whether it runs.
    alive: std::sync::atomic::AtomicBool,
    /// Its id: a disarm on the thread itself (a waker that drops its task) does not wait.
    thread: std::sync::OnceLock<std::thread::ThreadId>,
}

/// The current generation's reactor. Each one is leaked: there is one per process, plus one per
/// fork generation that used async waits.
static CURRENT: AtomicPtr<Reactor> = AtomicPtr::new(std::ptr::null_mut());

/// Whether wrapping counter `a` is at or past `b`.
fn reached(a: u32, b: u32) -> bool {
    // Reinterpreting the wrapped difference as signed is the comparison of wrapping counters.
    #[allow(clippy::cast_possible_wrap)]
    let d = a.wrapping_sub(b) as i32;
    d >= 0
}

impl Reactor {
    fn get() -> &'static Reactor {
        let p = CURRENT.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in CURRENT came from `Box::leak` below and is never
        // freed, so it is valid for 'static; the reactor is `Sync`.
        if let Some(r) = unsafe { p.as_ref() } {
            if r.born.is_current() {
                return r;
            }
        }
        // None yet, or the parent's (this is a forked child, which must not touch the parent's
        // lock: it may have been held by a thread that the child does not have).
        let fresh: &'static Reactor = Box::leak(Box::new(Reactor {
            born: Born::now(),
            inner: Mutex::new(Inner {
                regs: HashMap::new(),
                generation: 0,
            }),
            next_id: AtomicU64::new(0),
            control: AtomicU32::new(0),
            released: AtomicU32::new(0),
            letting_go: AtomicU32::new(0),
            started: std::sync::Once::new(),
            alive: std::sync::atomic::AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        }));
        let fresh_ptr = std::ptr::from_ref(fresh).cast_mut();
        match CURRENT.compare_exchange(p, fresh_ptr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh,
            // Another thread installed one first: use it (ours, never started, stays leaked:
            // a few hundred bytes, once).
            // SAFETY: as above, the pointer came from `Box::leak`.
            Err(other) => match unsafe { other.as_ref() } {
                Some(r) if r.born.is_current() => r,
                _ => fresh,
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing run under the lock panics; if something did, the map is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the thread look again (starting it on first use).
    fn poke(&'static self) {
        self.started.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("shmbus-waiter".into())
                .spawn(move || self.run());
            match spawned {
                Ok(handle) => {
                    let _ = self.thread.set(handle.thread().id());
                    self.alive.store(true, Ordering::Release);
                }
                // Then `park` wakes every task at once: they poll instead of hanging.
                Err(e) => tracing::error!(
                    error = %e,
                    "could not start the shmbus waiter thread; async waits will poll"
                ),
            }
        });
        self.control.fetch_add(1, Ordering::SeqCst);
        Futex.wake_all(&self.control);
    }

    /// Waits until the thread let go of snapshot `generation` (it is woken for that).
    fn let_go(&'static self, generation: u32) {
        if !self.alive.load(Ordering::Acquire)
            || self.thread.get() == Some(&std::thread::current().id())
        {
            return;
        }
        self.letting_go.fetch_add(1, Ordering::SeqCst);
        self.poke();
        // The thread wakes at once (the poke changed its word); the bound only guards against
        // a thread held up for long (then the segment is closed when it lets go).
        let give_up = Instant::now() + LET_GO_WAIT;
        loop {
            let r = self.released.load(Ordering::SeqCst);
            let now = Instant::now();
            if reached(r, generation) || now >= give_up {
                break;
            }
            Futex.wait(&self.released, r, Some(give_up - now));
        }
        self.letting_go.fetch_sub(1, Ordering::SeqCst);
    }

    fn run(&'static self) {
        let mut last_check = Instant::now();
        let mut last_poll = Instant::now();
        let mut due = false;
        loop {
            let control = self.control.load(Ordering::SeqCst);
            // A process whose heavy barriers are refused cannot count on a light publisher's
            // wake (decision 47): its tasks re-poll every `POLL_EVERY`.
            let poll_all = crate::barrier::heavy_unavailable() && {
                let now = last_poll.elapsed() >= POLL_EVERY;
                if now {
                    last_poll = Instant::now();
                }
                now
            };
            let mut wake = Vec::new();
            // Fire what changed, then collect what to sleep on: each distinct word once, with
            // the value its registrations saw (all equal now: a registration that saw an older
            // value than the word holds was just fired).
            let (generation, snapshot): (u32, Vec<(Interest, u32)>) = {
                let mut inner = self.lock();
                inner.generation = inner.generation.wrapping_add(1);
                let generation = inner.generation;
                inner.regs.retain(|_, r| {
                    let words = r.interest.words();
                    let fired = poll_all
                        || words.word.load(Ordering::Acquire) != r.seen
                        || (due && r.interest.liveness() != r.liveness);
                    if fired {
                        words.sleepers.fetch_sub(1, Ordering::SeqCst);
                        wake.push(r.waker.clone());
                    }
                    !fired
                });
                let mut distinct = HashMap::with_capacity(inner.regs.len());
                for r in inner.regs.values_mut() {
                    r.in_snapshot = Some(generation);
                    distinct
                        .entry(r.interest.word_addr())
                        .or_insert_with(|| (r.interest.clone(), r.seen));
                }
                (generation, distinct.into_values().collect())
            };
            due = false;
            for w in wake {
                w.wake();
            }
            let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(snapshot.len() + 1);
            words.push((&self.control, control));
            for (interest, seen) in snapshot.iter().take(MAX_WAIT_MANY - 1) {
                words.push((interest.words().word, *seen));
            }
            let timeout = if snapshot.is_empty() {
                None
            } else if snapshot.len() > MAX_WAIT_MANY - 1 || crate::barrier::heavy_unavailable() {
                Some(POLL_EVERY)
            } else {
                Some(CHECK_EVERY.saturating_sub(last_check.elapsed()))
            };
            if let Err(WaitManyError::Unsupported | WaitManyError::BadCount(_)) =
                Futex.wait_many(&words, timeout)
            {
                // No futex_waitv: sleep on our own word, and look at the others every
                // millisecond.
                let slice = if snapshot.is_empty() {
                    None
                } else {
                    Some(POLL_EVERY)
                };
                Futex.wait(&self.control, control, slice);
            }
            drop(words);
            if !snapshot.is_empty() && last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                due = true;
                for (interest, _) in &snapshot {
                    interest.look_for_dead();
                }
            }
            // The snapshot's holds on the segments end here, before the next sleep.
            drop(snapshot);
            self.released.store(generation, Ordering::SeqCst);
            if self.letting_go.load(Ordering::SeqCst) != 0 {
                Futex.wake_all(&self.released);
            }
        }
    }
}

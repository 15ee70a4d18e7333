//! Topics over segments: the safe, untyped layer under `shmbus::Publisher`/`Subscriber`.
//!
//! A topic is a segment of kind [`Kind::Topic`] whose payload holds a robust publish mutex (used
//! only when several publishers are allowed) followed by a [`Ring`]. This module adds what the
//! protocol leaves to its caller: liveness leases for every participant, reclaiming what dead
//! participants held, publish rights, and checking that an existing topic can honour what an
//! opener asks for.
//!
//! It hands out slots as byte slices; the `shmbus` crate turns them into typed values.

use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::fork::{Born, UsedAfterFork};
use crate::futex::Futex;
use crate::layout::TypeInfo;
use crate::liveness::{self, Lease};
use crate::name::Name;
use crate::ring::{Acquired, Overflow, Ring, RingConfig, RingLayout, RoomCache};
use crate::segment::{CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError};
use crate::sync::{self, RobustMutex};
use crate::time::{monotonic_ns, Deadline};
use crate::wire::lease;
use crate::wire::topic::RING_OFFSET;

/// A process-unique id tying loans and holds to the handle that made them.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const _: () = assert!(RobustMutex::SIZE <= RING_OFFSET);
const _: () = assert!(RING_OFFSET % 128 == 0);

/// How often a blocked participant checks on its peers.
const CHECK_EVERY: Option<Duration> = Some(Duration::from_millis(50));

/// What an opener asks of a topic. `None` fields take the topic's value (or, when creating, the
/// default); a `Some` the existing topic cannot honour is a [`TopicError::Qos`].
#[derive(Debug, Clone, Default)]
pub struct TopicOptions {
    /// Ring entries (default 16).
    pub capacity: Option<u32>,
    /// Payload bytes per slot, at least (a requirement on an existing topic).
    pub slot_size: Option<u32>,
    /// Payload bytes per slot when creating and `slot_size` is not given.
    pub default_slot_size: Option<u32>,
    /// Most subscribers (default 8).
    pub max_subscribers: Option<u32>,
    /// Most publishers (default 1: the lock-free fast path).
    pub max_publishers: Option<u32>,
    /// Most samples one subscriber holds at once (default 2).
    pub max_held: Option<u32>,
    /// Overflow policy (default [`Overflow::Overwrite`]).
    pub overflow: Option<Overflow>,
    /// Whether publishers record each message's publish time (default `false`; costs one
    /// clock read per publish). `Some(true)` is a requirement on an existing topic.
    pub timestamps: Option<bool>,
    /// File mode when creating (default `0o600`).
    pub mode: Option<u32>,
    /// How long to wait for a segment that is not ready (default 500 ms).
    pub open_timeout: Option<Duration>,
}

impl TopicOptions {
    fn config(&self) -> Result<RingConfig, TopicError> {
        Ok(RingConfig {
            capacity: self.capacity.unwrap_or(16),
            slot_size: self
                .slot_size
                .or(self.default_slot_size)
                .ok_or_else(|| TopicError::Config("slot size not given".into()))?,
            max_subscribers: self.max_subscribers.unwrap_or(8),
            max_publishers: self.max_publishers.unwrap_or(1),
            max_held: self.max_held.unwrap_or(2),
            overflow: self.overflow.unwrap_or(Overflow::Overwrite),
            timestamps: self.timestamps.unwrap_or(false),
        })
    }

    /// Checks the existing topic's `found` configuration against what was asked for.
    fn check(&self, name: &Name, found: &RingConfig) -> Result<(), TopicError> {
        let qos = |what: &'static str, requested: String, found: String| {
            Err(TopicError::Qos {
                name: name.clone(),
                what,
                requested,
                found,
            })
        };
        let at_least = |what: &'static str, req: Option<u32>, have: u32| match req {
            Some(r) if r > have => qos(what, format!("at least {r}"), have.to_string()),
            _ => Ok(()),
        };
        at_least("capacity", self.capacity, found.capacity)?;
        at_least("slot size", self.slot_size, found.slot_size)?;
        at_least(
            "max subscribers",
            self.max_subscribers,
            found.max_subscribers,
        )?;
        at_least("max publishers", self.max_publishers, found.max_publishers)?;
        at_least("max held samples", self.max_held, found.max_held)?;
        if self.timestamps == Some(true) && !found.timestamps {
            return qos("timestamps", "on".into(), "off".into());
        }
        match self.overflow {
            Some(o) if o != found.overflow => qos(
                "overflow policy",
                format!("{o:?}"),
                format!("{:?}", found.overflow),
            ),
            _ => Ok(()),
        }
    }
}

/// Why a topic could not be opened, created or joined.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The segment could not be opened or created.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The existing topic cannot honour what was asked for.
    #[error(
        "topic {name:?} cannot honour the requested {what}: asked for {requested}, it has {found}"
    )]
    Qos {
        /// The topic.
        name: Name,
        /// Which setting.
        what: &'static str,
        /// What the opener asked for.
        requested: String,
        /// What the topic has.
        found: String,
    },
    /// The requested configuration is invalid.
    #[error("invalid topic configuration: {0}")]
    Config(String),
    /// The topic's memory is damaged.
    #[error("topic {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The topic.
        name: Name,
        /// What is wrong.
        reason: String,
    },
    /// Every publisher row is taken by a live publisher.
    #[error("topic {name:?} already has its maximum of {max} publishers")]
    TooManyPublishers {
        /// The topic.
        name: Name,
        /// The maximum.
        max: u32,
    },
    /// Every subscriber row is taken by a live subscriber.
    #[error("topic {name:?} already has its maximum of {max} subscribers")]
    TooManySubscribers {
        /// The topic.
        name: Name,
        /// The maximum.
        max: u32,
    },
    /// An operating-system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// An attached topic, shared by the publishers and subscribers of this process that opened it.
pub struct RawTopic {
    // Field order matters: `ring` points into `segment` and must not outlive it (it has no Drop,
    // and is declared first so it is dropped first in any case).
    ring: Ring,
    segment: Segment,
    created: bool,
}

impl fmt::Debug for RawTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTopic")
            .field("name", self.segment.name())
            .field("config", self.ring.config())
            .finish()
    }
}

impl RawTopic {
    /// Opens the topic `name` storing `type_info`, creating it if it does not exist.
    pub fn open_or_create(
        name: &Name,
        type_info: &TypeInfo,
        opts: &TopicOptions,
    ) -> Result<Arc<RawTopic>, TopicError> {
        let config = opts.config()?;
        let layout = RingLayout::new(config).map_err(|e| TopicError::Config(e.0))?;
        let mut create =
            CreateOptions::new(Kind::Topic, type_info.clone(), RING_OFFSET + layout.size);
        create.mode = opts.mode.unwrap_or(0o600);
        create.lifetime = Lifetime::Scoped;
        create.params = [
            u64::from(layout.config.capacity),
            u64::from(layout.config.slot_size),
            u64::from(layout.config.max_subscribers),
            u64::from(layout.config.max_publishers),
            matches!(layout.config.overflow, Overflow::BackPressure) as u64,
            u64::from(layout.slots),
            u64::from(layout.config.timestamps),
            0,
        ];
        let mut expect = Expect::new(Kind::Topic, type_info.clone());
        if let Some(t) = opts.open_timeout {
            expect.timeout = t;
        }
        let (segment, created) = Segment::open_or_create(name, &expect, &create, |payload| {
            let base = NonNull::from(&mut payload[0]);
            // SAFETY: `payload` is the zero-filled, page-aligned payload of a segment nobody else
            // can see yet, `RING_OFFSET + layout.size` bytes long; the mutex sits at offset 0 and
            // the ring at RING_OFFSET (a multiple of 128).
            unsafe {
                RobustMutex::init(base.as_ptr().cast())
                    .expect("initialising a process-shared robust mutex on fresh memory");
                Ring::init(base.add(RING_OFFSET), &layout);
            }
        })?;
        Self::attach(segment, created, opts)
    }

    /// Opens the existing topic `name`.
    pub fn open(
        name: &Name,
        type_info: &TypeInfo,
        opts: &TopicOptions,
    ) -> Result<Arc<RawTopic>, TopicError> {
        let mut expect = Expect::new(Kind::Topic, type_info.clone());
        if let Some(t) = opts.open_timeout {
            expect.timeout = t;
        }
        Self::attach(Segment::open(name, &expect)?, false, opts)
    }

    fn attach(
        segment: Segment,
        created: bool,
        opts: &TopicOptions,
    ) -> Result<Arc<RawTopic>, TopicError> {
        let name = segment.name().clone();
        let corrupt = |reason: String| TopicError::Corrupt {
            name: name.clone(),
            reason,
        };
        let len = segment.payload_len();
        if len < RING_OFFSET {
            return Err(corrupt(format!("payload of {len} bytes")));
        }
        let base = segment.payload_ptr();
        // SAFETY: the segment maps `len >= RING_OFFSET` payload bytes (checked at open against
        // the file size); the ring part is `len - RING_OFFSET` bytes at a 128-aligned offset of
        // a page-aligned payload, and stays mapped while `segment` lives.
        let layout = unsafe { Ring::read_layout(base.add(RING_OFFSET), len - RING_OFFSET) }
            .map_err(|e| corrupt(e.0))?;
        opts.check(&name, &layout.config)?;
        let counters = NonNull::from(&segment.counters()[0]);
        // SAFETY: `read_layout` validated that the layout fits in the mapped bytes; the ring was
        // laid out by `Ring::init` (or is a foreign/corrupt segment, against which every index
        // read from it is bounds-checked). `RawTopic` keeps `segment` alive as long as `ring`.
        let ring = unsafe { Ring::from_raw(base.add(RING_OFFSET), layout, counters) };
        Ok(Arc::new(RawTopic {
            ring,
            segment,
            created,
        }))
    }

    /// The topic's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// Whether this handle created the topic.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The topic's configuration.
    pub fn config(&self) -> &RingConfig {
        self.ring.config()
    }

    /// The protocol view (for tools and benchmarks).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    fn publish_lock(&self) -> &RobustMutex {
        // SAFETY: the payload starts with a `RobustMutex` initialised by the creator (offset 0,
        // page-aligned, `RobustMutex::SIZE <= RING_OFFSET` bytes, mapped while `self` lives).
        unsafe { &*self.segment.payload_ptr().as_ptr().cast::<RobustMutex>() }
    }

    /// Reclaims rows of participants that died: frees their loans and holds. Returns how many.
    pub fn reclaim_dead(&self) -> u32 {
        let fd = self.segment.fd();
        let mut n = 0;
        let c = self.ring.config();
        for p in 0..c.max_publishers {
            if self.ring.publisher_active(p)
                && !liveness::is_held(fd, lease::topic_publisher(p)).unwrap_or(true)
            {
                if let Ok(Some(_lease)) = Lease::try_acquire(fd, lease::topic_publisher(p)) {
                    if self.ring.publisher_active(p) {
                        self.reclaim_publisher_row(p);
                        n += 1;
                    }
                }
            }
        }
        for k in 0..c.max_subscribers {
            if self.ring.subscriber_active(k)
                && !liveness::is_held(fd, lease::topic_subscriber(k)).unwrap_or(true)
            {
                if let Ok(Some(_lease)) = Lease::try_acquire(fd, lease::topic_subscriber(k)) {
                    if self.ring.subscriber_active(k) {
                        let held = self.ring.reclaim_subscriber(k, &Futex);
                        tracing::info!(topic = %self.name(), subscriber = k, held, "reclaimed a dead subscriber");
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Frees dead publisher row `p` (the caller holds its lease).
    fn reclaim_publisher_row(&self, p: u32) {
        if self.ring.config().max_publishers == 1 {
            // The only publisher had publish rights; holding its lease, so do we. Repair before
            // the row is marked free: if we die half-way, the next reclaimer repairs again.
            // SAFETY: with one publisher row, publish rights belong to the holder of lease 0,
            // which is us; the dead holder publishes no more.
            unsafe { self.ring.repair(&Futex) };
        }
        let loans = self.ring.reclaim_publisher(p);
        tracing::info!(topic = %self.name(), publisher = p, loans, "reclaimed a dead publisher");
    }

    /// Whether any publisher row is active.
    pub fn has_publisher(&self) -> bool {
        (0..self.ring.config().max_publishers).any(|p| self.ring.publisher_active(p))
    }

    /// Wakes every sleeping subscriber (so they re-check, e.g. for a departed publisher).
    fn wake_subscribers(&self) {
        self.ring.notify_all(&Futex);
    }
}

/// Why a loan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoanError {
    /// Every slot is taken even after reclaiming dead participants (a live subscriber holds more
    /// than the topic was sized for; cannot happen through this API).
    #[error("no free slot in topic {0:?}")]
    PoolExhausted(Name),
    /// This publisher already has a slot on loan.
    #[error("this publisher already has a slot on loan; publish or cancel it first")]
    AlreadyLoaned,
    /// The publisher was made before a fork; this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Back-pressure: the slowest live subscriber did not make room in time.
    #[error("timed out waiting for a slow subscriber to make room")]
    Timeout,
    /// The multi-publisher lock could not be taken.
    #[error("the publish lock failed: {0}")]
    Lock(#[from] sync::LockError),
    /// The publisher was made before a fork; this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// A publisher's membership of a topic.
pub struct RawPublisher {
    topic: Arc<RawTopic>,
    index: u32,
    hint: u32,
    loaned: bool,
    /// A slot loaned ahead, right after the last publish, for the next [`RawPublisher::loan`]
    /// to hand out without touching shared memory. It is this publisher's one loan while the
    /// caller has none, so the slot budget is unchanged.
    spare: Option<u32>,
    /// Lower bound of the subscribers' cursors (back-pressure topics).
    room: RoomCache,
    id: u64,
    /// The process generation that made it: used in a forked child, it refuses to act.
    born: Born,
    _lease: Lease,
}

/// A slot on loan to a [`RawPublisher`]: write it, then publish or cancel it. Cannot be forged
/// or copied. Dropping it without publishing or cancelling keeps the slot, and the publisher's
/// one loan, until the publisher drops (the typed `shmbus::Loan` cancels on drop).
#[derive(Debug)]
#[must_use = "a loan is only given back by publish or cancel"]
pub struct Loan {
    slot: u32,
    owner: u64,
}

impl Loan {
    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl fmt::Debug for RawPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawPublisher")
            .field("topic", self.topic.name())
            .field("index", &self.index)
            .finish()
    }
}

impl RawPublisher {
    /// Joins `topic` as a publisher.
    pub fn new(topic: Arc<RawTopic>) -> Result<RawPublisher, TopicError> {
        let max = topic.ring.config().max_publishers;
        let fd = topic.segment.fd();
        for p in 0..max {
            let lease = Lease::try_acquire(fd, lease::topic_publisher(p)).map_err(|source| {
                TopicError::Os {
                    op: "taking a publisher lease",
                    source,
                }
            })?;
            let Some(lease) = lease else { continue };
            if topic.ring.publisher_active(p) {
                topic.reclaim_publisher_row(p);
            }
            topic.ring.join_publisher(p, std::process::id());
            tracing::debug!(topic = %topic.name(), publisher = p, "publisher joined");
            return Ok(RawPublisher {
                topic,
                index: p,
                hint: 0,
                loaned: false,
                spare: None,
                room: RoomCache::new(),
                id: next_id(),
                born: Born::now(),
                _lease: lease,
            });
        }
        Err(TopicError::TooManyPublishers {
            name: topic.name().clone(),
            max,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &Arc<RawTopic> {
        &self.topic
    }

    /// `Err` in a forked child of the process that made this publisher.
    pub fn check_fork(&self) -> Result<(), UsedAfterFork> {
        self.born.check()
    }

    fn id(&self) -> u64 {
        self.id
    }

    /// Loans a free slot; write it through [`RawPublisher::slot_mut`], then
    /// [`RawPublisher::publish`] or [`RawPublisher::cancel`] it. A publisher has one loan at a
    /// time: a second call before the first is published or cancelled fails with
    /// [`LoanError::AlreadyLoaned`].
    pub fn loan(&mut self) -> Result<Loan, LoanError> {
        self.born.check()?;
        if self.loaned {
            return Err(LoanError::AlreadyLoaned);
        }
        if let Some(slot) = self.spare.take() {
            self.loaned = true;
            return Ok(Loan {
                slot,
                owner: self.id(),
            });
        }
        let slot = match self.topic.ring.loan(self.index, &mut self.hint) {
            Some(s) => s,
            None => {
                self.topic.reclaim_dead();
                self.topic
                    .ring
                    .loan(self.index, &mut self.hint)
                    .ok_or_else(|| LoanError::PoolExhausted(self.topic.name().clone()))?
            }
        };
        self.loaned = true;
        Ok(Loan {
            slot,
            owner: self.id(),
        })
    }

    /// The bytes of the slot on `loan`.
    ///
    /// # Panics
    ///
    /// If `loan` came from another publisher.
    pub fn slot_mut(&mut self, loan: &Loan) -> &mut [u8] {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        let ring = &self.topic.ring;
        let p = ring.slot_ptr(loan.slot);
        // SAFETY: the slot is on loan to this publisher (the `Loan` token cannot be forged or
        // copied, and is consumed by publish/cancel), so nobody else reads or writes it; it
        // spans `slot_size` bytes inside the mapping, which lives as long as `self.topic`; the
        // `&mut self` borrow keeps a second slice from existing at the same time.
        unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), ring.config().slot_size as usize) }
    }

    /// The bytes of the slot on `loan`, for reading back what was written.
    ///
    /// # Panics
    ///
    /// If `loan` came from another publisher.
    pub fn slot(&self, loan: &Loan) -> &[u8] {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        let ring = &self.topic.ring;
        // SAFETY: as in `slot_mut`: the slot is ours alone; the shared borrow of `self` keeps
        // `slot_mut` from being called while this slice lives.
        unsafe {
            std::slice::from_raw_parts(
                ring.slot_ptr(loan.slot).as_ptr(),
                ring.config().slot_size as usize,
            )
        }
    }

    /// Whether `slot` is free (see [`Ring::slot_is_free`]). On a topic with one publisher, that
    /// publisher may reuse whatever its last message in `slot` referenced.
    pub fn slot_is_free(&self, slot: u32) -> bool {
        slot < self.topic.ring.layout().slots && self.topic.ring.slot_is_free(slot)
    }

    /// Withdraws this publisher's message `seq` in `slot` if nobody has taken it yet (see
    /// [`Ring::retire`]); returns whether the slot is free now. Only on a topic with a single
    /// publisher (elsewhere it does nothing and returns `false`).
    pub fn retire(&mut self, seq: u64, slot: u32) -> bool {
        let ring = &self.topic.ring;
        if !self.born.is_current()
            || ring.config().max_publishers != 1
            || slot >= ring.layout().slots
        {
            return false;
        }
        // SAFETY: on a single-publisher topic the holder of its only publisher lease (this
        // publisher) has publish rights, and `&mut self` keeps it from publishing meanwhile.
        unsafe { ring.retire(seq, slot) }
    }

    /// The slot this publisher loaned ahead for its next loan, if any. Whatever an older
    /// message in that slot referenced is unreferenced: the slot was free when it was loaned.
    pub fn spare_slot(&self) -> Option<u32> {
        self.spare
    }

    /// Gives an unpublished loan back (it stays reserved for this publisher's next loan).
    pub fn cancel(&mut self, loan: Loan) {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        debug_assert!(self.spare.is_none());
        self.spare = Some(loan.slot);
        self.loaned = false;
    }

    /// Publishes `loan`, waiting up to `timeout` for room in back-pressure mode.
    /// On error the loan is handed back.
    pub fn publish(
        &mut self,
        loan: Loan,
        timeout: Option<Duration>,
    ) -> Result<u64, (PublishError, Loan)> {
        assert_eq!(
            loan.owner,
            self.id(),
            "a loan used with a publisher that did not make it"
        );
        if let Err(e) = self.born.check() {
            return Err((e.into(), loan));
        }
        let slot = loan.slot;
        let topic = &*self.topic;
        let ring = &topic.ring;
        let multi = ring.config().max_publishers > 1;
        let deadline = Deadline::after(timeout);
        let lock = topic.publish_lock();
        if multi {
            let acquired = match lock.lock(timeout) {
                Ok(a) => a,
                Err(e) => return Err((e.into(), loan)),
            };
            match acquired {
                sync::Acquired::Clean => {}
                sync::Acquired::OwnerDied => {
                    // SAFETY: we hold the publish mutex, so we have publish rights.
                    unsafe { ring.repair(&Futex) };
                    // SAFETY: we hold the mutex after OwnerDied and repaired what it guards.
                    let _ = unsafe { lock.make_consistent() };
                    tracing::warn!(topic = %topic.name(), "a publisher died while publishing; repaired the ring");
                }
            }
        }
        let room = ring.has_room_cached(&mut self.room)
            || ring.wait_for_space(&Futex, deadline, CHECK_EVERY, || {
                topic.reclaim_dead();
            });
        let result = if room {
            if ring.config().timestamps {
                ring.set_stamp(slot, monotonic_ns());
            }
            // SAFETY: publish rights: with one publisher row we hold its lease; with several we
            // hold the robust publish mutex. `slot` is our loan, written by the caller. In
            // back-pressure mode we just saw room while holding the rights.
            let (seq, freed) = unsafe { ring.publish(slot, &Futex) };
            if let Some(f) = freed {
                self.hint = f;
            }
            self.loaned = false;
            // Loan the next slot now, while the subscribers read this message: the next loan
            // then costs nothing on the path to them. (No reclaim if none is free: the next
            // `loan` does that.)
            self.spare = ring.loan(self.index, &mut self.hint);
            Ok(seq)
        } else {
            Err((PublishError::Timeout, loan))
        };
        if multi {
            // SAFETY: this thread locked it above.
            unsafe { lock.unlock() };
        }
        result
    }
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        if !self.born.is_current() {
            // A forked child's copy: the row, the loan and the lease are the parent's.
            return;
        }
        // Frees a loan that was dropped unpublished, and marks the row free.
        self.topic.ring.reclaim_publisher(self.index);
        self.topic.wake_subscribers();
        tracing::debug!(topic = %self.topic.name(), publisher = self.index, "publisher left");
    }
}

/// A slot held by a [`RawSubscriber`]: read it, then release it. Cannot be forged or copied.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a held slot is only given back by release"]
pub struct Held {
    seq: u64,
    slot: u32,
    owner: u64,
}

impl Held {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A message, held until [`RawSubscriber::release`].
    Message(Held),
    /// Nothing new.
    Empty,
    /// The subscriber missed `n` messages (overwritten); the next receive resumes at the
    /// oldest message still there.
    Lagged(u64),
    /// No publisher is alive and every message was read.
    Disconnected,
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The topic's memory is damaged.
    #[error("topic {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The topic.
        name: Name,
        /// What is wrong.
        reason: String,
    },
    /// The subscriber already holds as many samples as the topic allows.
    #[error(
        "this subscriber already holds {0} samples, the most the topic allows; drop one first"
    )]
    TooManyHeld(u32),
    /// The subscriber was made before a fork; this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// A subscriber's membership of a topic.
pub struct RawSubscriber {
    topic: Arc<RawTopic>,
    index: u32,
    cursor: Cell<u64>,
    held: Cell<u32>,
    saw_publisher: Cell<bool>,
    joins_at_start: u64,
    id: u64,
    /// The process generation that made it: used in a forked child, it refuses to act.
    born: Born,
    _lease: Lease,
}

impl fmt::Debug for RawSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSubscriber")
            .field("topic", self.topic.name())
            .field("index", &self.index)
            .field("cursor", &self.cursor.get())
            .finish()
    }
}

impl RawSubscriber {
    /// Joins `topic` as a subscriber that first reads up to `history` recent messages.
    pub fn new(topic: Arc<RawTopic>, history: u32) -> Result<RawSubscriber, TopicError> {
        let max = topic.ring.config().max_subscribers;
        let fd = topic.segment.fd();
        for k in 0..max {
            let lease = Lease::try_acquire(fd, lease::topic_subscriber(k)).map_err(|source| {
                TopicError::Os {
                    op: "taking a subscriber lease",
                    source,
                }
            })?;
            let Some(lease) = lease else { continue };
            if topic.ring.subscriber_active(k) {
                let held = topic.ring.reclaim_subscriber(k, &Futex);
                tracing::info!(topic = %topic.name(), subscriber = k, held, "reclaimed a dead subscriber");
            }
            let cursor = topic.ring.join_subscriber(k, std::process::id(), history);
            tracing::debug!(topic = %topic.name(), subscriber = k, cursor, "subscriber joined");
            let joins_at_start = topic.ring.publisher_joins();
            let saw = topic.has_publisher();
            return Ok(RawSubscriber {
                joins_at_start,
                topic,
                index: k,
                cursor: Cell::new(cursor),
                held: Cell::new(0),
                saw_publisher: Cell::new(saw),
                id: next_id(),
                born: Born::now(),
                _lease: lease,
            });
        }
        Err(TopicError::TooManySubscribers {
            name: topic.name().clone(),
            max,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &Arc<RawTopic> {
        &self.topic
    }

    /// `Err` in a forked child of the process that made this subscriber.
    pub fn check_fork(&self) -> Result<(), UsedAfterFork> {
        self.born.check()
    }

    /// The sequence number of the next message to read.
    pub fn cursor(&self) -> u64 {
        self.cursor.get()
    }

    /// Takes the next message without waiting.
    pub fn try_receive(&self) -> Result<Received, ReceiveError> {
        self.born.check()?;
        let max = self.topic.ring.config().max_held;
        if self.held.get() >= max {
            return Err(ReceiveError::TooManyHeld(max));
        }
        let mut cursor = self.cursor.get();
        let r = self.topic.ring.try_acquire(self.index, &mut cursor, &Futex);
        self.cursor.set(cursor);
        match r {
            Ok(Acquired::Message { seq, slot }) => {
                self.held.set(self.held.get() + 1);
                self.saw_publisher.set(true);
                Ok(Received::Message(Held {
                    seq,
                    slot,
                    owner: self.id(),
                }))
            }
            Ok(Acquired::Empty) => Ok(Received::Empty),
            Ok(Acquired::Lagged { skipped }) => Ok(Received::Lagged(skipped)),
            Err(e) => Err(ReceiveError::Corrupt {
                name: self.topic.name().clone(),
                reason: e.0,
            }),
        }
    }

    /// Takes the next message, waiting up to `timeout` (`None`: no limit). Returns
    /// [`Received::Empty`] on timeout and [`Received::Disconnected`] when every publisher this
    /// subscriber saw is gone (left or died) and nothing is left to read.
    pub fn receive(&self, timeout: Option<Duration>) -> Result<Received, ReceiveError> {
        let deadline = Deadline::after(timeout);
        loop {
            match self.try_receive()? {
                Received::Empty => {}
                r => return Ok(r),
            }
            let topic = &*self.topic;
            let mut gone = false;
            let ready = topic.ring.wait_for_message(
                self.cursor.get(),
                &Futex,
                deadline,
                CHECK_EVERY,
                || {
                    // A publisher existed if we saw one, or if one joined since we did (it may have
                    // died and been reclaimed by someone else before we looked).
                    if topic.has_publisher() || topic.ring.publisher_joins() != self.joins_at_start
                    {
                        self.saw_publisher.set(true);
                    }
                    topic.reclaim_dead();
                    gone = self.saw_publisher.get() && !topic.has_publisher();
                    !gone
                },
            );
            if !ready {
                if gone && !topic.ring.ready(self.cursor.get()) {
                    return Ok(Received::Disconnected);
                }
                if deadline.expired() {
                    return Ok(Received::Empty);
                }
            }
        }
    }

    fn id(&self) -> u64 {
        self.id
    }

    /// The bytes of the slot `held` names.
    ///
    /// # Panics
    ///
    /// If `held` came from another subscriber.
    pub fn slot<'a>(&'a self, held: &'a Held) -> &'a [u8] {
        assert_eq!(
            held.owner,
            self.id(),
            "a held slot used with a subscriber that did not take it"
        );
        let ring = &self.topic.ring;
        let p = ring.slot_ptr(held.slot);
        // SAFETY: this subscriber holds the slot (the `Held` token cannot be forged or copied
        // and is consumed by `release`); a held slot is never loaned, so nobody writes it while
        // the token lives. It spans `slot_size` bytes inside the mapping that lives as long as
        // `self.topic`, and the returned slice borrows both `self` and the token.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), ring.config().slot_size as usize) }
    }

    /// When the message in `held` was published ([`monotonic_ns`](crate::time::monotonic_ns)
    /// of the publisher), if the topic records publish times.
    ///
    /// # Panics
    ///
    /// If `held` came from another subscriber.
    pub fn published_at(&self, held: &Held) -> Option<u64> {
        assert_eq!(
            held.owner,
            self.id(),
            "a held slot used with a subscriber that did not take it"
        );
        self.topic.ring.stamp_of(held.slot)
    }

    /// Releases `held`.
    pub fn release(&self, held: Held) {
        assert_eq!(
            held.owner,
            self.id(),
            "a held slot used with a subscriber that did not take it"
        );
        if self.born.is_current() {
            self.topic.ring.release(self.index, held.slot);
        }
        self.held.set(self.held.get().saturating_sub(1));
    }
}

impl Drop for RawSubscriber {
    fn drop(&mut self) {
        if !self.born.is_current() {
            // A forked child's copy: the row, its holds and the lease are the parent's.
            return;
        }
        // Drops any hold still out (a `Held` forgotten by its user) and marks the row free.
        self.topic.ring.reclaim_subscriber(self.index, &Futex);
        tracing::debug!(topic = %self.topic.name(), subscriber = self.index, "subscriber left");
    }
}

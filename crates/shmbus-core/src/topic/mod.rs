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
use crate::layout::{Codec, TypeInfo};
use crate::liveness::{self, Lease};
use crate::name::Name;
use crate::ring::{
    Acquired, Evicted, Overflow, Read, Ring, RingConfig, RingLayout, RoomCache, SlotGuess,
    INLINE_MAX,
};
use crate::segment::{CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError};
use crate::sync::{self, RobustMutex};
use crate::time::{monotonic_ns, Deadline};
use crate::wire::lease;
use crate::wire::topic::RING_OFFSET;

mod publisher;
mod subscriber;

pub use publisher::{Loan, LoanError, PublishError, PublishManyError, RawPublisher};
pub use subscriber::{Copied, Held, RawSubscriber, ReceiveError, Received};

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
            inline: 0,
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

/// How many bytes of each message a new topic of `type_info` carries in its ring entries
/// ([`RingConfig::inline`]): all of a plain-old-data message of at most [`INLINE_MAX`] bytes
/// (read by a copying receive from the entry's cache line alone), none of any other.
fn inline_bytes(type_info: &TypeInfo) -> u32 {
    match u32::try_from(type_info.size) {
        Ok(size) if type_info.codec == Codec::Pod && size <= INLINE_MAX => size,
        _ => 0,
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
        let mut config = opts.config()?;
        config.inline = inline_bytes(type_info);
        let layout = RingLayout::new(config).map_err(|e| TopicError::Config(e.0))?;
        let mut create =
            CreateOptions::new(Kind::Topic, type_info.clone(), RING_OFFSET + layout.size);
        create.mode = opts.mode.unwrap_or(0o600);
        create.lifetime = Lifetime::Scoped;
        {
            use crate::wire::topic::param;
            let c = &layout.config;
            let p = &mut create.params;
            p[param::CAPACITY] = u64::from(c.capacity);
            p[param::SLOT_SIZE] = u64::from(c.slot_size);
            p[param::MAX_SUBSCRIBERS] = u64::from(c.max_subscribers);
            p[param::MAX_PUBLISHERS] = u64::from(c.max_publishers);
            p[param::BACK_PRESSURE] = u64::from(c.overflow == Overflow::BackPressure);
            p[param::SLOTS] = u64::from(layout.slots);
            p[param::TIMESTAMPS] = u64::from(c.timestamps);
        }
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
        self.reclaim_dead_publishers() + self.reclaim_dead_subscribers()
    }

    /// Reclaims the rows of publishers that died (what a waiter needs to learn that a topic
    /// has no publisher left: one lease test per active publisher row, none per subscriber).
    /// Returns how many.
    pub fn reclaim_dead_publishers(&self) -> u32 {
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
        n
    }

    /// Reclaims the rows of subscribers that died, freeing their holds. Returns how many.
    pub fn reclaim_dead_subscribers(&self) -> u32 {
        let fd = self.segment.fd();
        let mut n = 0;
        let c = self.ring.config();
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
            // It may have died light: sleepers need no heavy barrier for a dead publisher.
            self.ring.set_light(false);
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

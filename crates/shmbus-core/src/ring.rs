//! The topic protocol: a pool of reference-counted slots and a ring of publications.
//!
//! # Shape
//!
//! A topic's memory holds (see `docs/architecture.md` for byte offsets):
//!
//! - a [`RingHeader`]: the configuration, the publication counter `tail`, and two notification
//!   words (subscribers sleep on one, a publisher held back by a slow subscriber on the other);
//! - `capacity` ring [`Entry`]s: entry `n % capacity` names the slot that holds message `n`;
//! - `slots` slot **state words** and `slots` payload **slots** of `slot_size` bytes each;
//! - a table of subscribers ([`SubscriberEntry`]) and one of publishers ([`PublisherEntry`]).
//!
//! Messages are never copied by the protocol. A publisher *loans* a free slot, writes its message
//! there, and *publishes* it: the ring entry for the next sequence number now names that slot. A
//! subscriber *acquires* the slot named by the entry of its cursor and reads it in place for as
//! long as it holds it. A slot returns to the pool when it has left the ring and nobody holds it.
//! Because the ring refers to slots rather than containing them, a held message is never
//! overwritten, in either overflow mode.
//!
//! # The slot state word
//!
//! | bits | meaning |
//! |---|---|
//! | 0..=55 | bit *k*: subscriber *k* holds the slot |
//! | 56 | `RING`: a ring entry names the slot |
//! | 57..=63 | publisher index + 1 that has the slot on loan (0: not on loan) |
//!
//! | state | meaning | who moves it on |
//! |---|---|---|
//! | `0` | free | a publisher's loan: CAS `0 → owner` |
//! | `owner` only | on loan, being written | its publisher's publish: store `RING` |
//! | `RING \| holders` | published, maybe held | subscribers set/clear their bit; eviction clears `RING` |
//! | `holders` | left the ring, still held | the last holder's release makes it `0` |
//!
//! A subscriber sets its bit only while `RING` is set, then checks that the entry still names
//! the message it wanted; if not, it clears its bit and reports lag. Since a publisher clears
//! `RING` only *after* it rewrote the entry, a successful check proves the slot was not reused.
//!
//! # Entries
//!
//! An entry is two words, written by the one process that has publish rights, seqlock style:
//! `seq ← INVALID; fence(Release); slot ← s; seq ← n + 1 (Release)`. `seq` is the message number
//! plus one (0: never written); `slot == HOLE` marks a message lost with a publisher that died
//! while publishing it.
//!
//! # Publish rights
//!
//! [`Ring::publish`] must not run concurrently with itself: the caller holds the topic's only
//! publisher lease, or the topic's robust publish mutex. Loans are lock-free and per publisher.

use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use crate::futex::Notifier;
use crate::primitive::{fence, spin_loop, AtomicU32, AtomicU64, Ordering};
use crate::time::Deadline;

/// Most subscribers a topic can have (bits of the slot state word).
pub const MAX_SUBSCRIBERS: u32 = 56;
/// Most publishers a topic can have.
pub const MAX_PUBLISHERS: u32 = 127;

const RING_BIT: u64 = 1 << 56;
const LOAN_SHIFT: u32 = 57;

const SEQ_INVALID: u64 = u64::MAX;
/// `Entry::slot` of a message lost with its publisher.
const HOLE: u64 = u64::MAX;
/// `Entry::slot` of a message its publisher withdrew before anyone read it ([`Ring::retire`]),
/// to reuse its slot's resources; readers count it as lag.
const RETIRED: u64 = u64::MAX - 1;

/// Subscriber/publisher table entry states.
const FREE: u32 = 0;
const ACTIVE: u32 = 1;

/// Spins before a blocking wait goes to sleep (one under loom, to keep models small).
const SPINS: u32 = if cfg!(loom) { 1 } else { 32 };
/// Rounds of the spin that only pause the CPU; the rest yield it, so that a peer waiting for
/// this CPU (both processes on one core) runs at once instead of after our spin.
const PAUSES: u32 = 16;

/// One round of a waiting spin: pause for the first [`PAUSES`] rounds, then yield the CPU.
fn backoff(round: u32) {
    #[cfg(not(loom))]
    if round >= PAUSES {
        std::thread::yield_now();
        return;
    }
    let _ = round;
    spin_loop();
}

/// How long one sleep of a blocking wait lasts: until the deadline, cut to `check_every` if
/// given (so the waiter can check on its peers); `None` only when both are unbounded.
fn sleep_for(deadline: &Deadline, check_every: Option<Duration>) -> Option<Duration> {
    match (deadline.remaining(), check_every) {
        (None, None) => None,
        (Some(r), None) => Some(r),
        (None, Some(c)) => Some(c),
        (Some(r), Some(c)) => Some(r.min(c)),
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: no effect on memory).
#[inline(always)]
fn prefetch(p: NonNull<u8>) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults and has no effect on memory, whatever the address;
        // SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().cast::<i8>()) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = p;
}

/// What a topic does when a subscriber falls a whole ring behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Overwrite the oldest message; the slow subscriber is told how many it missed.
    Overwrite,
    /// The publisher waits for the slowest live subscriber (with a timeout).
    BackPressure,
}

impl Overflow {
    fn to_raw(self) -> u64 {
        match self {
            Overflow::Overwrite => 0,
            Overflow::BackPressure => 1,
        }
    }
    fn from_raw(raw: u64) -> Option<Overflow> {
        match raw {
            0 => Some(Overflow::Overwrite),
            1 => Some(Overflow::BackPressure),
            _ => None,
        }
    }
}

/// A topic's shape, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Ring entries: how many published messages stay readable.
    pub capacity: u32,
    /// Payload bytes per slot (rounded up to a multiple of 64 by [`RingLayout::new`]).
    pub slot_size: u32,
    /// Most subscribers at once (1..=[`MAX_SUBSCRIBERS`]).
    pub max_subscribers: u32,
    /// Most publishers at once (1..=[`MAX_PUBLISHERS`]); 1 enables the lock-free fast path.
    pub max_publishers: u32,
    /// Most loans one publisher has out at once.
    pub max_loans: u32,
    /// Most samples one subscriber holds at once.
    pub max_held: u32,
    /// Overflow policy.
    pub overflow: Overflow,
    /// Whether publishers record each message's publish time (see [`Ring::set_stamp`]).
    pub timestamps: bool,
}

impl RingConfig {
    /// Slots needed so that a loan never finds the pool empty while everyone is alive:
    /// every ring entry, every publisher's loans, every subscriber's held samples, and one.
    pub fn slots(&self) -> Option<u32> {
        let p = self.max_publishers.checked_mul(self.max_loans)?;
        let s = self.max_subscribers.checked_mul(self.max_held)?;
        self.capacity.checked_add(p)?.checked_add(s)?.checked_add(1)
    }
}

/// A configuration that cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic configuration: {0}")]
pub struct ConfigError(pub String);

/// The header of a topic's ring, at the start of the topic payload.
///
/// The configuration words are written once at creation and validated on every attach; the hot
/// words sit on their own cache lines.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RingHeader {
    capacity: u64,
    slots: u64,
    slot_size: u64,
    max_subscribers: u64,
    max_publishers: u64,
    max_loans: u64,
    max_held: u64,
    overflow: u64,
    /// 1 when publishers record publish times, else 0.
    timestamps: u64,
    /// How many times a publisher joined, ever (`Release` increments): lets a subscriber tell
    /// that a publisher existed even if another process reclaimed its row before it looked.
    publisher_joins: AtomicU64,
    /// How many times a subscriber joined, ever (`Release` increments): tells a back-pressured
    /// publisher that its cached lower bound of the cursors may be too high.
    subscriber_joins: AtomicU64,
    _pad0: [u8; 40],
    /// Next sequence number to publish; written by the holder of publish rights (`Release`).
    tail: AtomicU64,
    _pad1: [u8; 120],
    /// Subscribers sleep on this word; bumped by a publisher that saw sleepers.
    notify_word: AtomicU32,
    /// Number of subscribers inside a blocking wait (counted in before a `fence(SeqCst)`, see
    /// [`Ring::publish`]).
    notify_sleepers: AtomicU32,
    _pad2: [u8; 120],
    /// A back-pressured publisher sleeps on this word; bumped by a subscriber that saw it.
    progress_word: AtomicU32,
    /// Number of publishers waiting for space.
    progress_sleepers: AtomicU32,
    _pad3: [u8; 120],
}

/// One ring entry (see the module docs).
#[repr(C)]
#[derive(Debug)]
pub struct Entry {
    seq: AtomicU64,
    slot: AtomicU64,
}

/// A subscriber's row in the topic, on its own cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SubscriberEntry {
    /// FREE (0) or ACTIVE (1). The owner is whoever holds the row's lease.
    state: AtomicU32,
    /// Process id of the owner, for display.
    pid: AtomicU32,
    /// Next message the subscriber will read; a back-pressured publisher reads it.
    cursor: AtomicU64,
    /// Messages this subscriber missed by lagging.
    lagged: AtomicU64,
}

/// A publisher's row in the topic.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct PublisherEntry {
    /// FREE (0) or ACTIVE (1). The owner is whoever holds the row's lease.
    state: AtomicU32,
    /// Process id of the owner, for display.
    pid: AtomicU32,
}

/// Byte offsets of a topic's parts inside its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// The configuration (with `slot_size` rounded up).
    pub config: RingConfig,
    /// Number of slots.
    pub slots: u32,
    /// Offset of the entries.
    pub entries: usize,
    /// Offset of the slot state words.
    pub states: usize,
    /// Offset of the per-slot publish times (`slots` words when `timestamps` is set, else
    /// none).
    pub stamps: usize,
    /// Offset of the subscriber table.
    pub subscribers: usize,
    /// Offset of the publisher table.
    pub publishers: usize,
    /// Offset of the first slot (128-byte aligned).
    pub data: usize,
    /// Total bytes.
    pub size: usize,
}

fn align_up(x: usize, a: usize) -> Option<usize> {
    x.checked_next_multiple_of(a)
}

impl RingLayout {
    /// Lays out `config`, or explains why it cannot be.
    pub fn new(mut config: RingConfig) -> Result<RingLayout, ConfigError> {
        let err = |m: &str| Err(ConfigError(m.to_owned()));
        if config.capacity == 0 || config.capacity > 1 << 24 {
            return err("capacity must be between 1 and 16777216");
        }
        if !(1..=MAX_SUBSCRIBERS).contains(&config.max_subscribers) {
            return err("max_subscribers must be between 1 and 56");
        }
        if !(1..=MAX_PUBLISHERS).contains(&config.max_publishers) {
            return err("max_publishers must be between 1 and 127");
        }
        if config.max_loans == 0
            || config.max_held == 0
            || config.max_loans > 1024
            || config.max_held > 1024
        {
            return err("max_loans and max_held must be between 1 and 1024");
        }
        if config.slot_size == 0 {
            return err("slot_size must not be zero");
        }
        config.slot_size = config
            .slot_size
            .checked_next_multiple_of(64)
            .ok_or_else(|| ConfigError("slot_size too large".into()))?;
        let slots = config
            .slots()
            .ok_or_else(|| ConfigError("too many slots".into()))?;
        let too_big = || ConfigError("topic too large for this machine".into());
        let entries = size_of::<RingHeader>();
        let states = align_up(entries + config.capacity as usize * size_of::<Entry>(), 64)
            .ok_or_else(too_big)?;
        let stamps = align_up(states + slots as usize * 8, 64).ok_or_else(too_big)?;
        let stamp_words = if config.timestamps { slots as usize } else { 0 };
        let subscribers = align_up(stamps + stamp_words * 8, 64).ok_or_else(too_big)?;
        let publishers =
            subscribers + config.max_subscribers as usize * size_of::<SubscriberEntry>();
        let data = align_up(
            publishers + config.max_publishers as usize * size_of::<PublisherEntry>(),
            128,
        )
        .ok_or_else(too_big)?;
        let size = (slots as usize)
            .checked_mul(config.slot_size as usize)
            .and_then(|d| d.checked_add(data))
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        Ok(RingLayout {
            config,
            slots,
            entries,
            states,
            stamps,
            subscribers,
            publishers,
            data,
            size,
        })
    }
}

/// Why a topic's memory was refused at attach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt topic: {0}")]
pub struct CorruptRing(pub String);

/// A view of one topic's memory. It holds raw pointers: see [`Ring::from_raw`].
pub struct Ring {
    header: NonNull<RingHeader>,
    entries: NonNull<Entry>,
    states: NonNull<AtomicU64>,
    stamps: NonNull<AtomicU64>,
    subscribers: NonNull<SubscriberEntry>,
    publishers: NonNull<PublisherEntry>,
    data: NonNull<u8>,
    counters: NonNull<AtomicU64>,
    layout: RingLayout,
}

// SAFETY: a `Ring` only hands out shared references to atomics and raw slot pointers whose use is
// governed by the protocol; the memory it points into is shared between processes anyway.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Counter indices in the segment header's `counters` (what tools show).
pub mod counter {
    /// Messages published.
    pub const PUBLISHED: usize = 0;
    /// Messages subscribers missed by lagging, summed over subscribers.
    pub const LAGGED: usize = 1;
    /// Messages lost with a publisher that died while publishing them.
    pub const LOST: usize = 2;
    /// Times a publisher had to wait for a slow subscriber.
    pub const BACKPRESSURE_WAITS: usize = 3;
    /// Number of counters the ring uses.
    pub const COUNT: usize = 4;
}

/// A publisher's cached view of the slowest subscriber ([`Ring::has_room_cached`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomCache {
    joins: u64,
    min_cursor: u64,
}

impl RoomCache {
    /// A cache that is refilled on first use.
    pub fn new() -> RoomCache {
        RoomCache {
            joins: u64::MAX,
            min_cursor: 0,
        }
    }
}

/// What [`Ring::try_acquire`] found at a subscriber's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Message `seq` is in `slot`, now held by the subscriber.
    Message {
        /// Its sequence number.
        seq: u64,
        /// The slot that holds it.
        slot: u32,
    },
    /// Nothing new yet.
    Empty,
    /// The subscriber fell behind; `skipped` messages were overwritten and the cursor moved to
    /// the oldest message still readable.
    Lagged {
        /// How many messages were missed.
        skipped: u64,
    },
}

impl Ring {
    /// Writes a fresh topic into zero-filled memory and returns its layout.
    ///
    /// # Safety
    ///
    /// - `base` points to `layout.size` writable bytes, aligned to 128, zero-filled;
    /// - nobody else accesses them during the call.
    pub unsafe fn init(base: NonNull<u8>, layout: &RingLayout) {
        let c = &layout.config;
        // SAFETY: the caller guarantees exclusive access to aligned, zeroed memory of
        // `layout.size >= size_of::<RingHeader>()` bytes; every field is an integer or atomic.
        let h = unsafe { &mut *base.as_ptr().cast::<RingHeader>() };
        h.capacity = u64::from(c.capacity);
        h.slots = u64::from(layout.slots);
        h.slot_size = u64::from(c.slot_size);
        h.max_subscribers = u64::from(c.max_subscribers);
        h.max_publishers = u64::from(c.max_publishers);
        h.max_loans = u64::from(c.max_loans);
        h.max_held = u64::from(c.max_held);
        h.overflow = c.overflow.to_raw();
        h.timestamps = u64::from(c.timestamps);
    }

    /// Reads and validates the configuration of the topic at `base`, which must hold `len`
    /// bytes, and returns the layout it implies.
    ///
    /// # Safety
    ///
    /// `base` points to at least `len` readable bytes, aligned to 128, that stay mapped for
    /// the call.
    pub unsafe fn read_layout(base: NonNull<u8>, len: usize) -> Result<RingLayout, CorruptRing> {
        if len < size_of::<RingHeader>() {
            return Err(CorruptRing(format!(
                "{len} bytes cannot hold the ring header"
            )));
        }
        // SAFETY: checked above that the header fits; the caller guarantees alignment and
        // mapping; every bit pattern is valid for the integer fields read here.
        let h = unsafe { &*base.as_ptr().cast::<RingHeader>() };
        let small =
            |v: u64, what: &str| u32::try_from(v).map_err(|_| CorruptRing(format!("{what} = {v}")));
        let config = RingConfig {
            capacity: small(h.capacity, "capacity")?,
            slot_size: small(h.slot_size, "slot_size")?,
            max_subscribers: small(h.max_subscribers, "max_subscribers")?,
            max_publishers: small(h.max_publishers, "max_publishers")?,
            max_loans: small(h.max_loans, "max_loans")?,
            max_held: small(h.max_held, "max_held")?,
            overflow: Overflow::from_raw(h.overflow)
                .ok_or_else(|| CorruptRing(format!("overflow = {}", h.overflow)))?,
            timestamps: match h.timestamps {
                0 => false,
                1 => true,
                t => return Err(CorruptRing(format!("timestamps = {t}"))),
            },
        };
        let layout = RingLayout::new(config).map_err(|e| CorruptRing(e.0))?;
        if layout.config != config || u64::from(layout.slots) != h.slots {
            return Err(CorruptRing(
                "configuration words disagree with each other".into(),
            ));
        }
        if layout.size > len {
            return Err(CorruptRing(format!(
                "needs {} bytes, the segment holds {len}",
                layout.size
            )));
        }
        Ok(layout)
    }

    /// A view of the topic at `base` with a layout from [`Ring::read_layout`] (or the one given
    /// to [`Ring::init`]), counting into `counters`.
    ///
    /// # Safety
    ///
    /// - `base` points to `layout.size` bytes laid out by [`Ring::init`] with this layout,
    ///   readable and writable, aligned to 128;
    /// - `counters` points to [`counter::COUNT`] atomics;
    /// - both stay mapped for as long as the returned `Ring` (and anything it hands out) lives.
    pub unsafe fn from_raw(
        base: NonNull<u8>,
        layout: RingLayout,
        counters: NonNull<AtomicU64>,
    ) -> Ring {
        // SAFETY: all offsets were computed by `RingLayout::new` to lie within `layout.size`.
        unsafe {
            Ring {
                header: base.cast(),
                entries: base.add(layout.entries).cast(),
                states: base.add(layout.states).cast(),
                stamps: base.add(layout.stamps).cast(),
                subscribers: base.add(layout.subscribers).cast(),
                publishers: base.add(layout.publishers).cast(),
                data: base.add(layout.data),
                counters,
                layout,
            }
        }
    }

    /// The layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// The configuration.
    pub fn config(&self) -> &RingConfig {
        &self.layout.config
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: `from_raw`'s contract: the header is mapped for our lifetime.
        unsafe { self.header.as_ref() }
    }

    fn entry(&self, seq: u64) -> &Entry {
        let i = (seq % u64::from(self.layout.config.capacity)) as usize;
        // SAFETY: i < capacity, and `from_raw`'s contract keeps the entry array mapped.
        unsafe { &*self.entries.as_ptr().add(i) }
    }

    fn state(&self, slot: u32) -> &AtomicU64 {
        assert!(slot < self.layout.slots, "slot index out of range");
        // SAFETY: slot < slots (checked), and the state array is mapped for our lifetime.
        unsafe { &*self.states.as_ptr().add(slot as usize) }
    }

    fn stamp(&self, slot: u32) -> &AtomicU64 {
        assert!(slot < self.layout.slots, "slot index out of range");
        // SAFETY: slot < slots (checked), and the stamp array is mapped for our lifetime.
        unsafe { &*self.stamps.as_ptr().add(slot as usize) }
    }

    /// Records `ns` as the publish time of the message about to be published in `slot`, which
    /// is on loan to the caller. The [`Ring::publish`] that follows makes it visible with the
    /// message; topics without `timestamps` ignore it.
    pub fn set_stamp(&self, slot: u32, ns: u64) {
        if self.layout.config.timestamps {
            self.stamp(slot).store(ns, Ordering::Relaxed);
        }
    }

    /// The publish time recorded for the message in `slot`, which the caller holds (`None`:
    /// the topic does not record times).
    pub fn stamp_of(&self, slot: u32) -> Option<u64> {
        self.layout
            .config
            .timestamps
            .then(|| self.stamp(slot).load(Ordering::Relaxed))
    }

    fn subscriber(&self, k: u32) -> &SubscriberEntry {
        assert!(
            k < self.layout.config.max_subscribers,
            "subscriber index out of range"
        );
        // SAFETY: k < max_subscribers (checked), the table is mapped for our lifetime.
        unsafe { &*self.subscribers.as_ptr().add(k as usize) }
    }

    fn publisher(&self, p: u32) -> &PublisherEntry {
        assert!(
            p < self.layout.config.max_publishers,
            "publisher index out of range"
        );
        // SAFETY: p < max_publishers (checked), the table is mapped for our lifetime.
        unsafe { &*self.publishers.as_ptr().add(p as usize) }
    }

    fn counter(&self, i: usize) -> &AtomicU64 {
        assert!(i < counter::COUNT);
        // SAFETY: i < COUNT, and `from_raw`'s contract keeps the counters mapped.
        unsafe { &*self.counters.as_ptr().add(i) }
    }

    /// Reads counter `i` (see [`counter`]).
    pub fn counter_value(&self, i: usize) -> u64 {
        self.counter(i).load(Ordering::Relaxed)
    }

    /// Start of slot `slot`'s payload (`slot_size` bytes, 64-byte aligned).
    ///
    /// Whoever holds the slot's loan may write there; whoever holds the slot may read there.
    pub fn slot_ptr(&self, slot: u32) -> NonNull<u8> {
        assert!(slot < self.layout.slots, "slot index out of range");
        // SAFETY: slot < slots, so the offset lies within the data area of `layout.size` bytes.
        unsafe {
            self.data
                .add(slot as usize * self.layout.config.slot_size as usize)
        }
    }

    /// Number of messages published so far.
    pub fn published(&self) -> u64 {
        self.header().tail.load(Ordering::Acquire)
    }

    // ----- publishers -------------------------------------------------------------------

    /// Marks publisher row `p` active. The caller holds row `p`'s lease; if the row was left
    /// active by a publisher that died, call [`Ring::reclaim_publisher`] first.
    pub fn join_publisher(&self, p: u32, pid: u32) {
        let e = self.publisher(p);
        e.pid.store(pid, Ordering::Relaxed);
        e.state.store(ACTIVE, Ordering::Release);
        self.header()
            .publisher_joins
            .fetch_add(1, Ordering::Release);
    }

    /// How many times a publisher joined the topic, ever.
    pub fn publisher_joins(&self) -> u64 {
        self.header().publisher_joins.load(Ordering::Acquire)
    }

    /// Marks publisher row `p` free. The caller holds its lease and has no loans out.
    pub fn leave_publisher(&self, p: u32) {
        self.publisher(p).state.store(FREE, Ordering::Release);
    }

    /// Whether publisher row `p` is marked active.
    pub fn publisher_active(&self, p: u32) -> bool {
        self.publisher(p).state.load(Ordering::Acquire) == ACTIVE
    }

    /// Loans a free slot to publisher `p`, looking first at `*hint` (the slot its last publish
    /// freed: cache-hot). `None`: the pool is empty (dead participants may hold slots).
    pub fn loan(&self, p: u32, hint: &mut u32) -> Option<u32> {
        let owner = u64::from(p + 1) << LOAN_SHIFT;
        let n = self.layout.slots;
        let start = if *hint < n { *hint } else { 0 };
        for i in 0..n {
            let s = (start + i) % n;
            // Acquire pairs with the Release of the last holder's release (or the eviction), so
            // their reads of the slot happen before our writes.
            if self
                .state(s)
                .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                *hint = (s + 1) % n;
                return Some(s);
            }
        }
        None
    }

    /// Returns an unpublished loan to the pool.
    pub fn cancel_loan(&self, slot: u32) {
        self.state(slot).store(0, Ordering::Release);
    }

    /// Whether publishing the next message would overwrite one that a live subscriber has not
    /// read (back-pressure mode only; always `false` in overwrite mode).
    pub fn is_full(&self) -> bool {
        if self.layout.config.overflow != Overflow::BackPressure {
            return false;
        }
        let next = self.header().tail.load(Ordering::Relaxed);
        match self.min_cursor() {
            Some(min) => next >= min + u64::from(self.layout.config.capacity),
            None => false,
        }
    }

    /// [`Ring::is_full`] through a publisher's `cache`: while no subscriber joined since the
    /// cache was filled, cursors only move forward, so the cached smallest cursor is a lower
    /// bound and the scan of every subscriber row is skipped until the ring catches up with it.
    /// Returns `true` when there is certainly room; `false` means "ask [`Ring::is_full`]".
    pub fn has_room_cached(&self, cache: &mut RoomCache) -> bool {
        if self.layout.config.overflow != Overflow::BackPressure {
            return true;
        }
        let h = self.header();
        let next = h.tail.load(Ordering::Relaxed);
        let joins = h.subscriber_joins.load(Ordering::Acquire);
        let cap = u64::from(self.layout.config.capacity);
        if joins == cache.joins && next < cache.min_cursor.saturating_add(cap) {
            return true;
        }
        // Refill: read the joins count first, so a join that the scan misses changes it.
        let min = self.min_cursor();
        *cache = RoomCache {
            joins,
            min_cursor: min.unwrap_or(next),
        };
        match min {
            Some(m) => next < m + cap,
            None => true,
        }
    }

    /// The smallest cursor among active subscribers.
    /// The lowest cursor of the active subscribers: every message before it has been read by
    /// all of them (`None`: no subscriber).
    pub fn min_cursor(&self) -> Option<u64> {
        (0..self.layout.config.max_subscribers)
            .map(|k| self.subscriber(k))
            .filter(|e| e.state.load(Ordering::Acquire) == ACTIVE)
            .map(|e| e.cursor.load(Ordering::Acquire))
            .min()
    }

    /// Active subscribers whose cursor holds the publisher back (back-pressure mode).
    pub fn laggards(&self) -> Vec<u32> {
        let next = self.header().tail.load(Ordering::Relaxed);
        let cap = u64::from(self.layout.config.capacity);
        (0..self.layout.config.max_subscribers)
            .filter(|&k| {
                let e = self.subscriber(k);
                e.state.load(Ordering::Acquire) == ACTIVE
                    && next >= e.cursor.load(Ordering::Acquire) + cap
            })
            .collect()
    }

    /// Waits until [`Ring::is_full`] is false or the deadline passes, sleeping through
    /// `notifier` after a short spin. Every `check_every` it calls `on_slow`, which should
    /// reclaim dead subscribers. Returns whether there is space.
    pub fn wait_for_space<N: Notifier>(
        &self,
        notifier: &N,
        deadline: Deadline,
        check_every: Option<Duration>,
        mut on_slow: impl FnMut(),
    ) -> bool {
        if !self.is_full() {
            return true;
        }
        self.counter(counter::BACKPRESSURE_WAITS)
            .fetch_add(1, Ordering::Relaxed);
        for round in 0..SPINS {
            backoff(round);
            if !self.is_full() {
                return true;
            }
        }
        let h = self.header();
        loop {
            on_slow();
            // Dekker with `wake_publisher`: count ourselves in, SeqCst fence, then re-check.
            h.progress_sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let seen = h.progress_word.load(Ordering::Acquire);
            let full = self.is_full();
            if full && !deadline.expired() {
                notifier.wait(&h.progress_word, seen, sleep_for(&deadline, check_every));
            }
            h.progress_sleepers.fetch_sub(1, Ordering::Relaxed);
            if !full || !self.is_full() {
                return true;
            }
            if deadline.expired() {
                return false;
            }
        }
    }

    /// Publishes loaned `slot` as the next message and returns its sequence number and, if the
    /// message it overwrote left its slot free, that slot (a good hint for the next loan).
    ///
    /// # Safety
    ///
    /// - the caller has publish rights (no other `publish` or [`Ring::repair`] runs at the
    ///   same time on this topic, in any process);
    /// - `slot` is on loan to the caller and was written completely;
    /// - in back-pressure mode, the caller saw [`Ring::is_full`] return `false` after taking
    ///   publish rights (otherwise a subscriber may miss a message: no memory is at risk).
    pub unsafe fn publish<N: Notifier>(&self, slot: u32, notifier: &N) -> (u64, Option<u32>) {
        // SAFETY: the caller upholds `publish`'s contract.
        unsafe { self.publish_steps(slot, notifier, u8::MAX) }.expect("a full publish completes")
    }

    /// [`Ring::publish`] that stops after `stop_after` of its steps, as a publisher killed at
    /// that point would: for models of crashes. `None` when it stopped early.
    ///
    /// # Safety
    ///
    /// As for [`Ring::publish`].
    #[doc(hidden)]
    pub unsafe fn publish_steps<N: Notifier>(
        &self,
        slot: u32,
        notifier: &N,
        stop_after: u8,
    ) -> Option<(u64, Option<u32>)> {
        let h = self.header();
        let n = h.tail.load(Ordering::Relaxed);
        // The loan bits go, RING comes: no subscriber can hold a loaned slot, so a store is
        // enough. Release: the message bytes are visible to whoever acquires the slot.
        self.state(slot).store(RING_BIT, Ordering::Release);
        if stop_after == 0 {
            return None;
        }
        let e = self.entry(n);
        let old_seq = e.seq.load(Ordering::Relaxed);
        let old_slot = e.slot.load(Ordering::Relaxed);
        e.seq.store(SEQ_INVALID, Ordering::Relaxed);
        if stop_after == 1 {
            return None;
        }
        // Orders the INVALID store before the slot store for any reader that Acquire-loads the
        // new slot value (seqlock writer).
        fence(Ordering::Release);
        e.slot.store(u64::from(slot), Ordering::Relaxed);
        e.seq.store(n + 1, Ordering::Release);
        if stop_after == 2 {
            return None;
        }
        h.tail.store(n + 1, Ordering::Release);
        self.counter(counter::PUBLISHED)
            .store(n + 1, Ordering::Relaxed);

        // Evict the message this entry named. AcqRel: pairs with holders' Release releases.
        let mut freed = None;
        if old_seq != 0 && old_slot < u64::from(self.layout.slots) {
            let old_slot = old_slot as u32;
            let prev = self.state(old_slot).fetch_and(!RING_BIT, Ordering::AcqRel);
            if prev == RING_BIT {
                freed = Some(old_slot);
            }
        }

        // Wake sleepers, with no syscall when there are none. Dekker pairing: the sleeper counts
        // itself in, fences (SeqCst), then re-checks the entry; we store the entry, fence, then
        // read `sleepers`. One of us must see the other.
        fence(Ordering::SeqCst);
        if h.notify_sleepers.load(Ordering::Relaxed) > 0 {
            h.notify_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.notify_word);
        }
        Some((n, freed))
    }

    /// Frees every slot on loan to publisher `p` and marks its row free. The caller holds row
    /// `p`'s lease, and `p`'s previous owner is dead. If that publisher may have died holding
    /// publish rights, also call [`Ring::repair`] while holding them.
    pub fn reclaim_publisher(&self, p: u32) -> u32 {
        let owner = u64::from(p + 1) << LOAN_SHIFT;
        let mut freed = 0;
        for s in 0..self.layout.slots {
            if self
                .state(s)
                .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                freed += 1;
            }
        }
        self.publisher(p).state.store(FREE, Ordering::Release);
        freed
    }

    /// Completes or rolls forward a publish that a dead publisher left half done, and drops ring
    /// references no entry accounts for. Returns whether anything was repaired.
    ///
    /// # Safety
    ///
    /// The caller has publish rights (as for [`Ring::publish`]) and nobody else publishes.
    pub unsafe fn repair<N: Notifier>(&self, notifier: &N) -> bool {
        let h = self.header();
        let t = h.tail.load(Ordering::Relaxed);
        let e = self.entry(t);
        let mut repaired = false;
        match e.seq.load(Ordering::Relaxed) {
            s if s == t + 1 => {
                // Entry written, tail not advanced.
                h.tail.store(t + 1, Ordering::Release);
                repaired = true;
            }
            SEQ_INVALID => {
                // Died while rewriting the entry: the message is lost; say so. Same seqlock
                // writer steps as `publish`, so a reader never pairs a stale seq with HOLE.
                e.seq.store(SEQ_INVALID, Ordering::Relaxed);
                fence(Ordering::Release);
                e.slot.store(HOLE, Ordering::Relaxed);
                e.seq.store(t + 1, Ordering::Release);
                h.tail.store(t + 1, Ordering::Release);
                self.counter(counter::LOST).fetch_add(1, Ordering::Relaxed);
                repaired = true;
            }
            _ => {}
        }
        self.counter(counter::PUBLISHED)
            .store(h.tail.load(Ordering::Relaxed), Ordering::Relaxed);
        // RING bits that no entry accounts for: a slot published but not yet entered, or an
        // evicted one whose bit was not yet cleared.
        let mut named = vec![false; self.layout.slots as usize];
        let cap = u64::from(self.layout.config.capacity);
        for i in 0..cap {
            let e = self.entry(i);
            let s = e.slot.load(Ordering::Relaxed);
            if e.seq.load(Ordering::Relaxed) != 0 && s < u64::from(self.layout.slots) {
                named[s as usize] = true;
            }
        }
        for (s, named) in named.iter().enumerate() {
            if !named && self.state(s as u32).load(Ordering::Acquire) & RING_BIT != 0 {
                self.state(s as u32).fetch_and(!RING_BIT, Ordering::AcqRel);
                repaired = true;
            }
        }
        if repaired {
            fence(Ordering::SeqCst);
            h.notify_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.notify_word);
        }
        repaired
    }

    // ----- subscribers ------------------------------------------------------------------

    /// Marks subscriber row `k` active and returns its starting cursor: up to `history` of the
    /// most recent messages are still to be read. The caller holds row `k`'s lease; if the row
    /// was left active by a subscriber that died, call [`Ring::reclaim_subscriber`] first.
    pub fn join_subscriber(&self, k: u32, pid: u32, history: u32) -> u64 {
        let h = self.header();
        let e = self.subscriber(k);
        let history = u64::from(history.min(self.layout.config.capacity));
        let cursor = h.tail.load(Ordering::Acquire).saturating_sub(history);
        e.pid.store(pid, Ordering::Relaxed);
        e.lagged.store(0, Ordering::Relaxed);
        e.cursor.store(cursor, Ordering::Release);
        // A back-pressured publisher that computes its minimum after this fence sees us.
        e.state.store(ACTIVE, Ordering::Release);
        h.subscriber_joins.fetch_add(1, Ordering::Release);
        fence(Ordering::SeqCst);
        cursor
    }

    /// Marks subscriber row `k` free and wakes a publisher that may be waiting for it. The caller
    /// holds the lease and has released every slot it held.
    pub fn leave_subscriber<N: Notifier>(&self, k: u32, notifier: &N) {
        self.subscriber(k).state.store(FREE, Ordering::Release);
        self.wake_publisher(notifier);
    }

    /// Whether subscriber row `k` is marked active.
    pub fn subscriber_active(&self, k: u32) -> bool {
        self.subscriber(k).state.load(Ordering::Acquire) == ACTIVE
    }

    /// Drops every hold of the dead subscriber `k` and marks its row free. The caller holds row
    /// `k`'s lease and `k`'s previous owner is dead.
    pub fn reclaim_subscriber<N: Notifier>(&self, k: u32, notifier: &N) -> u32 {
        let bit = 1u64 << k;
        let mut released = 0;
        for s in 0..self.layout.slots {
            if self.state(s).fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                released += 1;
            }
        }
        self.leave_subscriber(k, notifier);
        released
    }

    fn wake_publisher<N: Notifier>(&self, notifier: &N) {
        let h = self.header();
        // Dekker pairing with `wait_for_space`: we moved our cursor (or left), then read
        // `progress_sleepers`; the publisher counts itself in, then re-reads our cursor.
        fence(Ordering::SeqCst);
        if h.progress_sleepers.load(Ordering::Relaxed) > 0 {
            h.progress_word.fetch_add(1, Ordering::SeqCst);
            notifier.wake_all(&h.progress_word);
        }
    }

    /// Tries to take the message at `*cursor` for subscriber `k`, moving the cursor past it (or
    /// past what was lost). Lost messages of dead publishers are skipped silently (they are
    /// counted in [`counter::LOST`]).
    ///
    /// # Errors
    ///
    /// [`CorruptRing`] if an entry names a slot that does not exist.
    pub fn try_acquire<N: Notifier>(
        &self,
        k: u32,
        cursor: &mut u64,
        notifier: &N,
    ) -> Result<Acquired, CorruptRing> {
        let bit = 1u64 << k;
        let cap = u64::from(self.layout.config.capacity);
        loop {
            let n = *cursor;
            let e = self.entry(n);
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 == n + 1 {
                // Acquire: if this is a newer slot value, the writer's INVALID store is visible
                // to the re-check below (pairs with the Release fence in `publish`).
                let slot = e.slot.load(Ordering::Acquire);
                if slot == HOLE {
                    if e.seq.load(Ordering::Acquire) == n + 1 {
                        *cursor = n + 1;
                        self.store_cursor(k, n + 1, notifier);
                    }
                    continue;
                }
                if slot == RETIRED {
                    if e.seq.load(Ordering::Acquire) != n + 1 {
                        continue;
                    }
                    *cursor = n + 1;
                    self.store_cursor(k, n + 1, notifier);
                    self.subscriber(k).lagged.fetch_add(1, Ordering::Relaxed);
                    self.counter(counter::LAGGED)
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(Acquired::Lagged { skipped: 1 });
                }
                if slot >= u64::from(self.layout.slots) {
                    if e.seq.load(Ordering::Acquire) != n + 1 {
                        continue; // torn read of an entry being rewritten
                    }
                    return Err(CorruptRing(format!(
                        "entry names slot {slot} of {}",
                        self.layout.slots
                    )));
                }
                let slot = slot as u32;
                // Start fetching the message while the CAS below takes the state word: the two
                // cache misses overlap instead of following each other.
                prefetch(self.slot_ptr(slot));
                let st = self.state(slot);
                // First guess: published and held by nobody, the common case; a CAS straight
                // away takes the line once, where a load first would fetch it twice (shared,
                // then exclusive). A wrong guess costs one more round of the loop. Acquire on
                // CAS failure: seeing RING cleared means seeing the eviction, which came after
                // the entry was rewritten, so the retry below reads the new entry rather than
                // spinning on a stale one.
                let mut cur = RING_BIT;
                let held = loop {
                    if cur & RING_BIT == 0 {
                        break false; // evicted meanwhile
                    }
                    // Acquire: pairs with the publisher's Release store of RING, so the message
                    // bytes are visible once we hold the slot.
                    match st.compare_exchange_weak(
                        cur,
                        cur | bit,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break true,
                        Err(now) => cur = now,
                    }
                };
                if held {
                    // The entry must still name this message *and* this slot: `retire` rewrites
                    // an entry's slot while keeping its sequence number.
                    if e.seq.load(Ordering::Acquire) == n + 1
                        && e.slot.load(Ordering::Acquire) == u64::from(slot)
                    {
                        *cursor = n + 1;
                        self.store_cursor(k, n + 1, notifier);
                        return Ok(Acquired::Message { seq: n, slot });
                    }
                    st.fetch_and(!bit, Ordering::Release);
                }
                continue; // the entry moved on: the next round reports the lag
            }
            let resume = if s1 == SEQ_INVALID {
                // The entry is being rewritten, or this is a stale view of it being written for
                // message n itself. Acquire `tail`: if message n was published, its entry write
                // happened before, so a re-read shows it (or something newer).
                let tail = self.header().tail.load(Ordering::Acquire);
                if tail <= n {
                    return Ok(Acquired::Empty);
                }
                if e.seq.load(Ordering::Acquire) != SEQ_INVALID {
                    continue;
                }
                // Still invalid after message n was published: it is being overwritten by a
                // message m >= n + capacity. Entries from tail - capacity on may be intact.
                tail.saturating_sub(cap).max(n + 1)
            } else if s1 <= n {
                // The entry holds an older message: n is not published yet (or we saw a stale
                // value, which a retry will fix).
                return Ok(Acquired::Empty);
            } else {
                // s1 > n + 1: the entry holds m = s1 - 1 >= n + capacity, so every message
                // before m + 1 - capacity is gone.
                s1.saturating_sub(cap).max(n + 1)
            };
            let skipped = resume - n;
            *cursor = resume;
            self.store_cursor(k, resume, notifier);
            self.subscriber(k)
                .lagged
                .fetch_add(skipped, Ordering::Relaxed);
            self.counter(counter::LAGGED)
                .fetch_add(skipped, Ordering::Relaxed);
            return Ok(Acquired::Lagged { skipped });
        }
    }

    fn store_cursor<N: Notifier>(&self, k: u32, cursor: u64, notifier: &N) {
        self.subscriber(k).cursor.store(cursor, Ordering::Release);
        if self.layout.config.overflow == Overflow::BackPressure {
            self.wake_publisher(notifier);
        }
    }

    /// Whether a call to [`Ring::try_acquire`] at `cursor` would find something (a message, a
    /// lag, or a lost message) rather than [`Acquired::Empty`].
    pub fn ready(&self, cursor: u64) -> bool {
        let s1 = self.entry(cursor).seq.load(Ordering::Acquire);
        if s1 == SEQ_INVALID {
            self.header().tail.load(Ordering::Acquire) > cursor
        } else {
            s1 > cursor
        }
    }

    /// Whether `slot` is free: out of the ring, held by nobody, on loan to nobody.
    ///
    /// A publisher that is the only one to loan from this ring may conclude that whatever it
    /// attached to the slot's last message (an array block) is no longer referenced.
    pub fn slot_is_free(&self, slot: u32) -> bool {
        // Acquire: the holders' reads of the slot (and of what it references) happen before
        // whatever the caller does next with it.
        self.state(slot).load(Ordering::Acquire) == 0
    }

    /// Withdraws message `seq`, published in `slot` and not yet evicted, so that its slot is
    /// freed early: readers that have not taken it yet see it as lost (lag of one); readers that
    /// hold it keep it until they release it. Returns whether the slot is free now (`false`:
    /// someone holds it, or `seq` is no longer in the ring at `slot`).
    ///
    /// # Safety
    ///
    /// The caller has publish rights, as for [`Ring::publish`].
    pub unsafe fn retire(&self, seq: u64, slot: u32) -> bool {
        let h = self.header();
        let tail = h.tail.load(Ordering::Relaxed);
        let cap = u64::from(self.layout.config.capacity);
        if seq >= tail || seq + cap < tail {
            return false;
        }
        let e = self.entry(seq);
        if e.seq.load(Ordering::Relaxed) != seq + 1
            || e.slot.load(Ordering::Relaxed) != u64::from(slot)
            || self.state(slot).load(Ordering::Relaxed) != RING_BIT
        {
            // Gone from the ring, or held: a held message is left alone (a reader that takes
            // it between this check and the rewrite below keeps it, see the module docs).
            return false;
        }
        // Rewrite the entry as in `publish` (seqlock), keeping its sequence number: a reader that
        // sets its bit after this sees `RETIRED` in the slot word and lets go.
        e.seq.store(SEQ_INVALID, Ordering::Relaxed);
        fence(Ordering::Release);
        e.slot.store(RETIRED, Ordering::Relaxed);
        e.seq.store(seq + 1, Ordering::Release);
        let prev = self.state(slot).fetch_and(!RING_BIT, Ordering::AcqRel);
        prev == RING_BIT
    }

    /// Releases subscriber `k`'s hold of `slot`.
    pub fn release(&self, k: u32, slot: u32) {
        // Release: our reads of the slot happen before a publisher's next loan of it.
        self.state(slot).fetch_and(!(1u64 << k), Ordering::Release);
    }

    /// Waits until [`Ring::ready`] at `cursor` or the deadline. Spins briefly, then sleeps on the
    /// notification word; every `check_every` it calls `on_slow`, which returns `false` to stop
    /// waiting (e.g. no publisher is alive). Returns whether something is ready.
    pub fn wait_for_message<N: Notifier>(
        &self,
        cursor: u64,
        notifier: &N,
        deadline: Deadline,
        check_every: Option<Duration>,
        mut on_slow: impl FnMut() -> bool,
    ) -> bool {
        for round in 0..SPINS {
            if self.ready(cursor) {
                return true;
            }
            backoff(round);
        }
        let h = self.header();
        loop {
            // Dekker with `publish`: count ourselves in, SeqCst fence, then re-check. (A fence
            // rather than SeqCst accesses: it is what the proof needs, and what loom models.)
            h.notify_sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let seen = h.notify_word.load(Ordering::Acquire);
            let ready = self.ready(cursor);
            if !ready && !deadline.expired() {
                notifier.wait(&h.notify_word, seen, sleep_for(&deadline, check_every));
            }
            h.notify_sleepers.fetch_sub(1, Ordering::Relaxed);
            if ready || self.ready(cursor) {
                return true;
            }
            if deadline.expired() || !on_slow() {
                return false;
            }
        }
    }

    /// Wakes every sleeping subscriber, for them to re-check the topic.
    pub fn notify_all<N: Notifier>(&self, notifier: &N) {
        let h = self.header();
        h.notify_word.fetch_add(1, Ordering::SeqCst);
        notifier.wake_all(&h.notify_word);
    }

    /// What tools show of subscriber row `k`: `(active, pid, cursor, lagged)`.
    pub fn subscriber_info(&self, k: u32) -> (bool, u32, u64, u64) {
        let e = self.subscriber(k);
        (
            e.state.load(Ordering::Acquire) == ACTIVE,
            e.pid.load(Ordering::Relaxed),
            e.cursor.load(Ordering::Relaxed),
            e.lagged.load(Ordering::Relaxed),
        )
    }

    /// What tools show of publisher row `p`: `(active, pid)`.
    pub fn publisher_info(&self, p: u32) -> (bool, u32) {
        let e = self.publisher(p);
        (
            e.state.load(Ordering::Acquire) == ACTIVE,
            e.pid.load(Ordering::Relaxed),
        )
    }
}

/// A topic's memory on the heap, for loom models and unit tests.
#[derive(Debug)]
pub struct HeapRing {
    ring: Ring,
    mem: *mut u8,
    size: usize,
    counters: Box<[AtomicU64; counter::COUNT]>,
}

// SAFETY: the memory is owned and only reached through the protocol.
unsafe impl Send for HeapRing {}
// SAFETY: as above.
unsafe impl Sync for HeapRing {}

impl HeapRing {
    /// Builds a topic of `config` in fresh heap memory.
    pub fn new(config: RingConfig) -> Result<HeapRing, ConfigError> {
        let layout = RingLayout::new(config)?;
        let alloc = std::alloc::Layout::from_size_align(layout.size, 128)
            .map_err(|e| ConfigError(e.to_string()))?;
        // SAFETY: `alloc` has non-zero size (the header alone is several hundred bytes).
        let mem = unsafe { std::alloc::alloc_zeroed(alloc) };
        let base = NonNull::new(mem).ok_or_else(|| ConfigError("out of memory".into()))?;
        // Atomics built by loom must be constructed by loom: write them in place.
        // SAFETY: every atomic lives at an offset computed by the layout, inside the allocation.
        unsafe { write_atomics(base, &layout) };
        // SAFETY: fresh, zeroed (apart from the atomics' initial zero values), exclusive memory
        // of `layout.size` bytes aligned to 128.
        unsafe { Ring::init(base, &layout) };
        let counters = Box::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let cptr = NonNull::from(&counters[0]);
        // SAFETY: laid out by `init` with `layout`; the allocation and the boxed counters live
        // as long as the `HeapRing`, which owns both and drops the ring view first.
        let ring = unsafe { Ring::from_raw(base, layout, cptr) };
        Ok(HeapRing {
            ring,
            mem,
            size: layout.size,
            counters,
        })
    }

    /// The ring view.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

/// Writes fresh atomics over every atomic of the layout (required for loom's atomics; a no-op in
/// effect for std's, whose zero value is all-zero bytes).
///
/// # Safety
///
/// `base` points to `layout.size` writable bytes aligned to 128 that nobody else accesses.
unsafe fn write_atomics(base: NonNull<u8>, layout: &RingLayout) {
    // SAFETY: (for each write below) offsets come from the layout, lie within `layout.size`,
    // and are aligned for the type (the layout aligns every part).
    unsafe {
        let h = base.as_ptr().cast::<RingHeader>();
        std::ptr::addr_of_mut!((*h).tail).write(AtomicU64::new(0));
        std::ptr::addr_of_mut!((*h).publisher_joins).write(AtomicU64::new(0));
        std::ptr::addr_of_mut!((*h).subscriber_joins).write(AtomicU64::new(0));
        std::ptr::addr_of_mut!((*h).notify_word).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).notify_sleepers).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).progress_word).write(AtomicU32::new(0));
        std::ptr::addr_of_mut!((*h).progress_sleepers).write(AtomicU32::new(0));
        for i in 0..layout.config.capacity as usize {
            let e = base.as_ptr().add(layout.entries).cast::<Entry>().add(i);
            e.write(Entry {
                seq: AtomicU64::new(0),
                slot: AtomicU64::new(0),
            });
        }
        let parts: &[usize] = if layout.config.timestamps {
            &[layout.states, layout.stamps]
        } else {
            &[layout.states]
        };
        for i in 0..layout.slots as usize {
            for &part in parts {
                base.as_ptr()
                    .add(part)
                    .cast::<AtomicU64>()
                    .add(i)
                    .write(AtomicU64::new(0));
            }
        }
        for i in 0..layout.config.max_subscribers as usize {
            let e = base
                .as_ptr()
                .add(layout.subscribers)
                .cast::<SubscriberEntry>()
                .add(i);
            e.write(SubscriberEntry {
                state: AtomicU32::new(0),
                pid: AtomicU32::new(0),
                cursor: AtomicU64::new(0),
                lagged: AtomicU64::new(0),
            });
        }
        for i in 0..layout.config.max_publishers as usize {
            let e = base
                .as_ptr()
                .add(layout.publishers)
                .cast::<PublisherEntry>()
                .add(i);
            e.write(PublisherEntry {
                state: AtomicU32::new(0),
                pid: AtomicU32::new(0),
            });
        }
    }
}

impl Drop for HeapRing {
    fn drop(&mut self) {
        let _ = &self.counters;
        // SAFETY: allocated in `new` with this size and alignment; the ring view dies with us.
        // Loom's atomics own no resources that need dropping beyond what loom tracks per model.
        unsafe {
            std::alloc::dealloc(
                self.mem,
                std::alloc::Layout::from_size_align_unchecked(self.size, 128),
            )
        };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::futex::Futex;

    fn cfg(capacity: u32, overflow: Overflow) -> RingConfig {
        RingConfig {
            capacity,
            slot_size: 8,
            max_subscribers: 2,
            max_publishers: 1,
            max_loans: 1,
            max_held: 1,
            overflow,
            timestamps: false,
        }
    }

    #[test]
    fn publish_times_travel_with_the_message_only_when_asked_for() {
        let off = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
        let on = HeapRing::new(RingConfig {
            timestamps: true,
            ..cfg(4, Overflow::Overwrite)
        })
        .unwrap();
        assert_eq!(off.ring().layout().stamps, off.ring().layout().subscribers);
        assert!(on.ring().layout().subscribers > on.ring().layout().stamps);
        for (h, want) in [(&off, None), (&on, Some(1234))] {
            let r = h.ring();
            let mut hint = 0;
            let mut cursor = r.join_subscriber(0, 1, 0);
            let s = r.loan(0, &mut hint).unwrap();
            r.set_stamp(s, 1234);
            // SAFETY: single-threaded test: we have publish rights and the loan of `s`.
            unsafe { r.publish(s, &Futex) };
            match r.try_acquire(0, &mut cursor, &Futex).unwrap() {
                Acquired::Message { slot, .. } => {
                    assert_eq!(r.stamp_of(slot), want);
                    r.release(0, slot);
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    fn send(r: &Ring, hint: &mut u32, v: u64) {
        let s = r.loan(0, hint).expect("free slot");
        // SAFETY: we hold the loan of `s`; the slot is 64 bytes, aligned.
        unsafe { r.slot_ptr(s).cast::<u64>().as_ptr().write(v) };
        // SAFETY: single-threaded test: we have publish rights.
        let (_, freed) = unsafe { r.publish(s, &Futex) };
        if let Some(f) = freed {
            *hint = f;
        }
    }

    fn recv(r: &Ring, k: u32, cursor: &mut u64) -> Result<Option<u64>, u64> {
        match r.try_acquire(k, cursor, &Futex).unwrap() {
            Acquired::Message { slot, .. } => {
                // SAFETY: we hold `slot`.
                let v = unsafe { r.slot_ptr(slot).cast::<u64>().as_ptr().read() };
                r.release(k, slot);
                Ok(Some(v))
            }
            Acquired::Empty => Ok(None),
            Acquired::Lagged { skipped } => Err(skipped),
        }
    }

    #[test]
    fn room_cache_is_a_lower_bound_until_a_subscriber_joins() {
        let h = HeapRing::new(cfg(2, Overflow::BackPressure)).unwrap();
        let r = h.ring();
        let mut hint = 0;
        let mut cache = RoomCache::new();
        let mut c0 = r.join_subscriber(0, 1, 0);
        assert!(r.has_room_cached(&mut cache));
        send(r, &mut hint, 1);
        send(r, &mut hint, 2);
        assert!(
            !r.has_room_cached(&mut cache),
            "subscriber 0 has read nothing"
        );
        assert!(r.is_full());
        assert_eq!(recv(r, 0, &mut c0), Ok(Some(1)));
        assert_eq!(recv(r, 0, &mut c0), Ok(Some(2)));
        assert!(
            r.has_room_cached(&mut cache),
            "refilled: subscriber 0 is at 2"
        );
        // A late joiner that wants both messages lowers the minimum: the cache must notice.
        let _c1 = r.join_subscriber(1, 2, 2);
        assert!(!r.has_room_cached(&mut cache));
        assert!(r.is_full());
    }

    #[test]
    fn layout_is_aligned_and_bounded() {
        let l = RingLayout::new(cfg(8, Overflow::Overwrite)).unwrap();
        assert_eq!(l.data % 128, 0);
        assert_eq!(l.slots, 8 + 1 + 2 + 1);
        assert_eq!(l.size, l.data + 12 * 64);
        assert!(RingLayout::new(cfg(0, Overflow::Overwrite)).is_err());
    }

    #[test]
    fn in_order_and_lag() {
        let h = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
        let r = h.ring();
        let mut hint = 0;
        let mut c = r.join_subscriber(0, 1, 0);
        assert_eq!(recv(r, 0, &mut c), Ok(None));
        for v in 0..3 {
            send(r, &mut hint, v);
        }
        assert_eq!(recv(r, 0, &mut c), Ok(Some(0)));
        for v in 3..10 {
            send(r, &mut hint, v);
        }
        // 10 published, capacity 4: 6..=9 remain; we were at 1.
        assert_eq!(recv(r, 0, &mut c), Err(5));
        for v in 6..10 {
            assert_eq!(recv(r, 0, &mut c), Ok(Some(v)));
        }
        assert_eq!(recv(r, 0, &mut c), Ok(None));
        assert_eq!(r.counter_value(counter::LAGGED), 5);
        // Every slot but the four in the ring is free again.
        let free = (0..r.layout().slots)
            .filter(|&s| r.state(s).load(Ordering::Relaxed) == 0)
            .count();
        assert_eq!(free as u32, r.layout().slots - 4);
    }

    #[test]
    fn held_slot_is_never_reused() {
        let h = HeapRing::new(cfg(2, Overflow::Overwrite)).unwrap();
        let r = h.ring();
        let mut hint = 0;
        let mut c = r.join_subscriber(0, 1, 0);
        send(r, &mut hint, 7);
        let Acquired::Message { slot, .. } = r.try_acquire(0, &mut c, &Futex).unwrap() else {
            panic!()
        };
        for v in 0..20 {
            send(r, &mut hint, v);
        }
        // SAFETY: still held.
        assert_eq!(unsafe { r.slot_ptr(slot).cast::<u64>().as_ptr().read() }, 7);
        r.release(0, slot);
        assert_eq!(r.state(slot).load(Ordering::Relaxed), 0);
    }

    #[test]
    fn history_and_backpressure() {
        let h = HeapRing::new(cfg(4, Overflow::BackPressure)).unwrap();
        let r = h.ring();
        let mut hint = 0;
        assert!(!r.is_full(), "no subscriber: never full");
        for v in 0..6 {
            send(r, &mut hint, v);
        }
        let mut c = r.join_subscriber(1, 1, 2);
        assert_eq!(recv(r, 1, &mut c), Ok(Some(4)));
        for v in 6..9 {
            assert!(!r.is_full());
            send(r, &mut hint, v);
        }
        assert!(r.is_full());
        assert_eq!(r.laggards(), vec![1]);
        assert_eq!(recv(r, 1, &mut c), Ok(Some(5)));
        assert!(!r.is_full());
        r.reclaim_subscriber(1, &Futex);
        assert!(!r.is_full());
    }

    #[test]
    fn repair_after_death_mid_publish() {
        let h = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
        let r = h.ring();
        let mut hint = 0;
        let mut c = r.join_subscriber(0, 1, 0);
        send(r, &mut hint, 1);
        // A publisher dies after marking its slot RING and invalidating the entry.
        let s = r.loan(0, &mut hint).unwrap();
        r.state(s).store(RING_BIT, Ordering::Release);
        r.entry(1).seq.store(SEQ_INVALID, Ordering::Relaxed);
        // SAFETY: single-threaded: nobody else publishes.
        assert!(unsafe { r.repair(&Futex) });
        assert_eq!(r.counter_value(counter::LOST), 1);
        assert_eq!(
            r.state(s).load(Ordering::Relaxed),
            0,
            "orphan RING reference dropped"
        );
        send(r, &mut hint, 2);
        assert_eq!(recv(r, 0, &mut c), Ok(Some(1)));
        assert_eq!(recv(r, 0, &mut c), Ok(Some(2)), "the hole is skipped");
        // A publisher that dies holding a loan gives it back through reclaim.
        let s = r.loan(0, &mut hint).unwrap();
        assert_eq!(r.reclaim_publisher(0), 1);
        assert_eq!(r.state(s).load(Ordering::Relaxed), 0);
    }

    #[test]
    fn corrupt_slot_index_is_an_error() {
        let h = HeapRing::new(cfg(4, Overflow::Overwrite)).unwrap();
        let r = h.ring();
        let mut c = r.join_subscriber(0, 1, 0);
        r.entry(0).slot.store(999, Ordering::Relaxed);
        r.entry(0).seq.store(1, Ordering::Release);
        assert!(r.try_acquire(0, &mut c, &Futex).is_err());
    }
}

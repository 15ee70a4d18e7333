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
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::time::Duration;

use crate::futex::Notifier;
use crate::primitive::{fence, spin_loop, AtomicU32, AtomicU64, Ordering};
use crate::time::Deadline;

#[cfg(any(test, loom))]
mod heap;
mod publish;
mod subscribe;
#[cfg(any(test, loom))]
pub(crate) use heap::HeapRing;
#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

/// Most subscribers a topic can have (bits of the slot state word).
pub const MAX_SUBSCRIBERS: u32 = 56;
/// Most publishers a topic can have.
pub const MAX_PUBLISHERS: u32 = 127;
/// How many times a reader retries a step that another participant's progress keeps failing
/// before it calls the topic corrupt (far above what any number of honest peers cause).
const ROUND_LIMIT: u64 = if cfg!(loom) { 64 } else { 1 << 16 };

/// Slots a publisher of a topic with small slots ([`BATCH_SLOT_MAX`] bytes at most) may have
/// on loan at once: its next loan, and as many more kept for batches of publishes, which evict
/// the slots of a chunk of that many messages after one fence (see [`Ring::evict_after_fence`]).
pub const BATCH_LOANS: u32 = 8;
/// Largest slot for which publishers keep [`BATCH_LOANS`] loans; with larger slots a publisher
/// has one (the extra slots would cost memory for no gain: copying such a message costs more
/// than the fence).
pub const BATCH_SLOT_MAX: u32 = 1024;

/// Most bytes of a message that its ring entry also carries ([`RingConfig::inline`]): an entry
/// with them fills one cache line (two words of entry, six of message).
pub const INLINE_MAX: u32 = 48;
const INLINE_WORDS: usize = INLINE_MAX as usize / 8;

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
    /// Most samples one subscriber holds at once.
    pub max_held: u32,
    /// Overflow policy.
    pub overflow: Overflow,
    /// Whether publishers record each message's publish time (see [`Ring::set_stamp`]).
    pub timestamps: bool,
    /// How many bytes of each message its ring entry carries too (0 to [`INLINE_MAX`]; 0:
    /// none). With them each entry fills a cache line of its own, and a copying reader of a
    /// message that fits reads that one line: the entry and the message cross between cores
    /// together ([`Ring::try_read`]). Readers that hold the slot read the slot as always.
    pub inline: u32,
}

impl RingConfig {
    /// Slots one publisher may have on loan at once (the spare it loans ahead counts as its
    /// loan): [`BATCH_LOANS`] with slots of at most [`BATCH_SLOT_MAX`] bytes, else 1.
    pub fn loans_per_publisher(&self) -> u32 {
        if self.slot_size <= BATCH_SLOT_MAX {
            BATCH_LOANS
        } else {
            1
        }
    }

    /// Slots needed so that a loan never finds the pool empty while everyone is alive:
    /// every ring entry, every publisher's loans ([`RingConfig::loans_per_publisher`]), every
    /// subscriber's held samples, and one.
    pub fn slots(&self) -> Option<u32> {
        let p = self
            .max_publishers
            .checked_mul(self.loans_per_publisher())?;
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
    /// Loans one publisher may have out at once: [`RingConfig::loans_per_publisher`] (a
    /// function of the slot size, checked at attach).
    loans_per_publisher: u64,
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
    /// [`RingConfig::inline`].
    inline: u64,
    _pad0: [u8; 32],
    /// Next sequence number to publish; written by the holder of publish rights (`Release`).
    tail: AtomicU64,
    _pad1: [u8; 120],
    /// Subscribers sleep on this word; bumped by a publisher that saw sleepers.
    notify_word: AtomicU32,
    /// Number of subscribers inside a blocking wait (counted in before a `fence(SeqCst)`, see
    /// [`Ring::publish`]).
    notify_sleepers: AtomicU32,
    /// 1 while the publisher publishes with no fence of its own, else 0 (decision 47): a
    /// subscriber about to sleep then makes the heavy barrier. Written by the holder of publish
    /// rights of a one-publisher topic only.
    light: AtomicU32,
    _pad2: [u8; 116],
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

/// A ring entry that carries the first bytes of its message ([`RingConfig::inline`]): one
/// cache line. The words are written between the entry's `INVALID` and final `seq` stores,
/// like `slot`.
#[repr(C, align(64))]
#[derive(Debug)]
struct InlineEntry {
    entry: Entry,
    words: [AtomicU64; INLINE_WORDS],
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
    /// Bytes per entry: 16, or 64 with inline message bytes.
    pub entry_size: usize,
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
        if config.max_held == 0 || config.max_held > 1024 {
            return err("max_held must be between 1 and 1024");
        }
        if config.slot_size == 0 {
            return err("slot_size must not be zero");
        }
        // Slots are at least 64 bytes (rounded up below), so the inline bytes are in the slot.
        if config.inline > INLINE_MAX {
            return err("inline must be at most 48 bytes");
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
        let entry_size = if config.inline > 0 {
            size_of::<InlineEntry>()
        } else {
            size_of::<Entry>()
        };
        let states =
            align_up(entries + config.capacity as usize * entry_size, 64).ok_or_else(too_big)?;
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
            entry_size,
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
    /// The first entry; entry `i` is `layout.entry_size * i` bytes on.
    entries: NonNull<u8>,
    /// Words of message an entry carries ([`RingConfig::inline`] rounded up to words).
    inline_words: usize,
    states: NonNull<AtomicU64>,
    stamps: NonNull<AtomicU64>,
    subscribers: NonNull<SubscriberEntry>,
    publishers: NonNull<PublisherEntry>,
    data: NonNull<u8>,
    counters: NonNull<AtomicU64>,
    /// `capacity - 1` when the capacity is a power of two (an entry index is then a mask, not a
    /// 64-bit division, which costs tens of cycles on every publish and receive), else 0.
    entry_mask: u64,
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
pub use crate::wire::counter;

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

/// What [`Ring::try_read`] found at a subscriber's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read<R> {
    /// Message `seq`, as `value` (what the read function made of its slot, checked intact).
    Message {
        /// Its sequence number.
        seq: u64,
        /// What the read function returned.
        value: R,
    },
    /// Nothing new yet.
    Empty,
    /// As [`Acquired::Lagged`].
    Lagged {
        /// How many messages were missed.
        skipped: u64,
    },
    /// A lag or a damaged entry is next; the cursor was left before it (`keep_going` false).
    Stop,
}

/// The most messages one [`Ring::read_run`] takes.
pub(crate) const RUN: usize = 32;

/// A copying reader's guess of the slots of its next messages (see [`Ring::try_read`]);
/// `u32::MAX`: no guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotGuess {
    /// The slot of the message at the cursor.
    pub(crate) now: u32,
    /// The slot of the one after it.
    pub(crate) next: u32,
}

impl Default for SlotGuess {
    fn default() -> Self {
        SlotGuess {
            now: u32::MAX,
            next: u32::MAX,
        }
    }
}

/// What became of the slot whose message a publish evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evicted {
    /// No message was evicted (the entry was empty), or its slot is still held.
    Nothing,
    /// The slot is free now.
    Free(u32),
    /// The slot went straight to the publisher's loan (`reloan`).
    Loaned(u32),
}

/// Where a reader stands whose entry holds another message than the one at its cursor.
enum Behind {
    /// The message is not published yet.
    Empty,
    /// A stale view of an entry being rewritten: read it again.
    Retry,
    /// Messages were overwritten; this is the first one still readable.
    Resume(u64),
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
        h.loans_per_publisher = u64::from(c.loans_per_publisher());
        h.max_held = u64::from(c.max_held);
        h.overflow = c.overflow.to_raw();
        h.timestamps = u64::from(c.timestamps);
        h.inline = u64::from(c.inline);
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
            max_held: small(h.max_held, "max_held")?,
            overflow: Overflow::from_raw(h.overflow)
                .ok_or_else(|| CorruptRing(format!("overflow = {}", h.overflow)))?,
            timestamps: match h.timestamps {
                0 => false,
                1 => true,
                t => return Err(CorruptRing(format!("timestamps = {t}"))),
            },
            inline: small(h.inline, "inline")?,
        };
        if h.loans_per_publisher != u64::from(config.loans_per_publisher()) {
            return Err(CorruptRing(format!(
                "loans per publisher = {}",
                h.loans_per_publisher
            )));
        }
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
                entries: base.add(layout.entries),
                inline_words: layout.config.inline.div_ceil(8) as usize,
                states: base.add(layout.states).cast(),
                stamps: base.add(layout.stamps).cast(),
                subscribers: base.add(layout.subscribers).cast(),
                publishers: base.add(layout.publishers).cast(),
                data: base.add(layout.data),
                counters,
                entry_mask: if layout.config.capacity.is_power_of_two() {
                    u64::from(layout.config.capacity) - 1
                } else {
                    0
                },
                layout,
            }
        }
    }

    /// Whether the topic's publisher publishes light now: no fence of its own per publish, so
    /// a subscriber about to sleep makes a heavy barrier (`membarrier`) first (decision 47).
    pub fn publishes_light(&self) -> bool {
        self.header().light.load(Ordering::Relaxed) != 0
    }

    /// How many subscribers sleep on the topic now, or are about to (a snapshot, for display
    /// and tests).
    pub fn subscribers_asleep(&self) -> u32 {
        self.header().notify_sleepers.load(Ordering::Relaxed)
    }

    /// The layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// The configuration.
    pub fn config(&self) -> &RingConfig {
        &self.layout.config
    }

    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: `from_raw`'s contract: the header is mapped for our lifetime.
        unsafe { self.header.as_ref() }
    }

    #[inline]
    fn entry(&self, seq: u64) -> &Entry {
        // SAFETY: `entry_ptr` points to an `Entry` (the first field of an `InlineEntry` when
        // entries carry message bytes) inside the mapping, which lives as long as we do.
        unsafe { &*self.entry_ptr(seq).cast::<Entry>() }
    }

    /// Entry `seq % capacity` and the message words it carries (empty when the topic has no
    /// [`RingConfig::inline`] bytes).
    #[inline]
    fn entry_inline(&self, seq: u64) -> (&Entry, &[AtomicU64]) {
        let p = self.entry_ptr(seq);
        if self.inline_words == 0 {
            // SAFETY: as in `entry`.
            return (unsafe { &*p.cast::<Entry>() }, &[]);
        }
        // SAFETY: with inline bytes the entries are `InlineEntry`s (`RingLayout::new` sized and
        // aligned them so; 64-byte stride from a 128-aligned start), mapped as in `entry`;
        // `inline_words <= INLINE_WORDS` (validated by `RingLayout::new`).
        let e = unsafe { &*p.cast::<InlineEntry>() };
        (&e.entry, &e.words[..self.inline_words])
    }

    #[inline]
    fn entry_ptr(&self, seq: u64) -> *const u8 {
        let i = if self.entry_mask != 0 || self.layout.config.capacity == 1 {
            (seq & self.entry_mask) as usize
        } else {
            (seq % u64::from(self.layout.config.capacity)) as usize
        };
        // SAFETY: i < capacity, so the offset lies inside the entry array that `RingLayout::new`
        // sized as `capacity * entry_size` bytes; `from_raw`'s contract keeps it mapped.
        unsafe { self.entries.as_ptr().add(i * self.layout.entry_size) }
    }

    /// Copies the first `dst.len()` bytes (at most [`RingConfig::inline`]) of the message words
    /// of an entry into `dst`, with relaxed atomic loads: what [`Ring::try_read`] hands its
    /// read function. Meaningful only once `try_read`'s check passed.
    #[inline]
    pub(crate) fn copy_inline(words: &[AtomicU64], dst: &mut [u8]) {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have one layout, and only initialized bytes
        // are written through the view.
        let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<u8>]) };
        Ring::copy_inline_uninit(words, dst);
    }

    /// [`Ring::copy_inline`] into memory that may be uninitialized. Returns how many bytes it
    /// wrote (the first ones of `dst`): `dst.len()` when the words hold that many.
    #[inline]
    pub(crate) fn copy_inline_uninit(words: &[AtomicU64], dst: &mut [MaybeUninit<u8>]) -> usize {
        let full = (dst.len() / 8).min(words.len());
        let out = dst.as_mut_ptr().cast::<u8>();
        for (i, w) in words[..full].iter().enumerate() {
            let v = w.load(Ordering::Relaxed);
            // SAFETY: `8 i + 8 <= 8 full <= dst.len()`: inside `dst`, which we borrow mutably;
            // an unaligned write, as `dst` has no alignment.
            unsafe { out.add(i * 8).cast::<u64>().write_unaligned(v) };
        }
        let rest = dst.len() - full * 8;
        if let (1..=7, Some(w)) = (rest, words.get(full)) {
            let bytes = w.load(Ordering::Relaxed).to_ne_bytes();
            for (d, &b) in dst[full * 8..].iter_mut().zip(&bytes[..rest]) {
                d.write(b);
            }
            return dst.len();
        }
        full * 8
    }

    /// Stores the first [`RingConfig::inline`] bytes of loaned `slot` into the words of `inline`
    /// (the entry being written for its message).
    #[inline]
    fn fill_inline(&self, slot: u32, inline: &[AtomicU64]) {
        use std::sync::atomic::{AtomicU64 as StdU64, Ordering as StdOrdering};
        if inline.is_empty() {
            return;
        }
        let src = self.slot_ptr(slot).as_ptr().cast::<u64>();
        for (i, w) in inline.iter().enumerate() {
            // SAFETY: `8 i + 8 <= 48 <= slot_size` (inline is at most 48 and slots are at least
            // 64 bytes): inside the slot, 8-aligned (slots start 64-aligned). Read atomically:
            // the slot is our loan, but copying readers may read it meanwhile.
            let v = unsafe { StdU64::from_ptr(src.add(i)) }.load(StdOrdering::Relaxed);
            w.store(v, Ordering::Relaxed);
        }
    }

    #[inline]
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
    pub(crate) fn set_stamp(&self, slot: u32, ns: u64) {
        if self.layout.config.timestamps {
            self.stamp(slot).store(ns, Ordering::Relaxed);
        }
    }

    /// The publish time recorded for the message in `slot`, which the caller holds (`None`:
    /// the topic does not record times).
    pub(crate) fn stamp_of(&self, slot: u32) -> Option<u64> {
        self.layout
            .config
            .timestamps
            .then(|| self.stamp(slot).load(Ordering::Relaxed))
    }

    #[inline]
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

    #[inline]
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
    /// Whoever holds the slot's loan may write there; whoever holds the slot may read there;
    /// anyone else reads it only through [`Ring::copy_slot`].
    #[inline]
    pub fn slot_ptr(&self, slot: u32) -> NonNull<u8> {
        assert!(slot < self.layout.slots, "slot index out of range");
        // SAFETY: slot < slots, so the offset lies within the data area of `layout.size` bytes.
        unsafe {
            self.data
                .add(slot as usize * self.layout.config.slot_size as usize)
        }
    }

    /// Copies the first `dst.len()` bytes of `slot` (at most its size) into `dst` with relaxed
    /// atomic loads, a word at a time: the slot may be written by another process meanwhile (a
    /// reader that does not hold it, [`Ring::try_read`]), so it is never read as plain memory.
    /// What was copied is only meaningful once `try_read`'s check passed.
    #[inline]
    pub(crate) fn copy_slot(&self, slot: u32, dst: &mut [u8]) {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have one layout, and only initialized bytes
        // are written through the view.
        let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<u8>]) };
        self.copy_slot_uninit(slot, dst);
    }

    /// [`Ring::copy_slot`] into memory that may be uninitialized. Returns how many bytes it
    /// wrote (the first ones of `dst`): `dst.len()` unless that is more than a slot.
    #[inline]
    pub(crate) fn copy_slot_uninit(&self, slot: u32, dst: &mut [MaybeUninit<u8>]) -> usize {
        use std::sync::atomic::{AtomicU64 as StdU64, AtomicU8 as StdU8, Ordering as StdOrdering};
        let len = dst.len().min(self.layout.config.slot_size as usize);
        let src = self.slot_ptr(slot).as_ptr();
        let words = len / 8;
        let out = dst.as_mut_ptr().cast::<u8>();
        for i in 0..words {
            // SAFETY: `src + 8 i .. + 8` lies inside the slot (8 i + 8 <= len <= slot_size), which
            // lies inside the mapping this ring lives in; slots start 64-aligned and `8 i` is a
            // multiple of 8, so the word is aligned. The memory is only accessed atomically here.
            let w = unsafe { StdU64::from_ptr(src.add(i * 8).cast()) }.load(StdOrdering::Relaxed);
            // SAFETY: `8 i + 8 <= len <= dst.len()`: inside `dst`, which we borrow mutably; an
            // unaligned write, as `dst` has no alignment.
            unsafe { out.add(i * 8).cast::<u64>().write_unaligned(w) };
        }
        for (i, b) in dst[words * 8..len].iter_mut().enumerate() {
            // SAFETY: as above, for the byte at `8 words + i < len`; bytes need no alignment.
            b.write(unsafe { StdU8::from_ptr(src.add(words * 8 + i)) }.load(StdOrdering::Relaxed));
        }
        len
    }

    /// Number of messages published so far.
    pub fn published(&self) -> u64 {
        self.header().tail.load(Ordering::Acquire)
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

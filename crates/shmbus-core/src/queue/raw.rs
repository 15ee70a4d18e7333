//! A queue over a segment: layout, opening, participant rows and leases, slot data.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::protocol::{
    QueueConfig, QueueCore, QueueError, QueueWords, Reclaimed, SlotEntry, Taken,
};
use crate::fork::Born;
use crate::futex::Futex;
use crate::layout::TypeInfo;
use crate::liveness::{self, Lease};
use crate::name::Name;
use crate::segment::{CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError};
use crate::sync::{Holders, RobustMutex};
use crate::time::{monotonic_ns, Deadline};
use crate::wire::lease;
use crate::wire::queue::{
    counter, mode, param, HEADER_OFFSET, MAX_CAPACITY, MAX_ROWS, SLOTS_OFFSET, SLOT_ALIGN,
    SLOT_ENTRY_SIZE,
};

const _: () = assert!(RobustMutex::SIZE <= HEADER_OFFSET);
const _: () = assert!(HEADER_OFFSET % RobustMutex::ALIGN == 0);

/// Byte offsets of a queue's parts in its payload, computed from its configuration with
/// checked arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// The configuration.
    pub config: QueueConfig,
    /// The ready ring (`capacity` `u32` slot indices).
    pub ready: usize,
    /// The free ring (`capacity` `u32` slot indices).
    pub free: usize,
    /// The participant rows (`rows` `u32` pids).
    pub rows: usize,
    /// The data slots (`capacity` × `slot_size` bytes, 64-aligned).
    pub data: usize,
    /// Payload bytes in all.
    pub size: usize,
}

impl QueueLayout {
    /// The layout of a queue of `config`, or why there is none.
    pub fn new(config: QueueConfig) -> Result<QueueLayout, String> {
        let c = config;
        if c.capacity == 0 || c.capacity > MAX_CAPACITY {
            return Err(format!(
                "a capacity of {} (1 to {MAX_CAPACITY})",
                c.capacity
            ));
        }
        if c.slot_size == 0 || c.slot_size as usize % SLOT_ALIGN != 0 || c.slot_size > 1 << 30 {
            return Err(format!(
                "a slot size of {} (a non-zero multiple of {SLOT_ALIGN}, at most 1 GiB)",
                c.slot_size
            ));
        }
        if c.rows == 0 || c.rows > MAX_ROWS {
            return Err(format!("{} participant rows (1 to {MAX_ROWS})", c.rows));
        }
        if c.max_deliveries == 0 {
            return Err("a delivery limit of 0 (at least 1)".into());
        }
        let too_big = || format!("a queue of {c:?} is too large for this machine");
        let cap = c.capacity as usize;
        let ready = cap
            .checked_mul(SLOT_ENTRY_SIZE)
            .and_then(|n| n.checked_add(SLOTS_OFFSET))
            .ok_or_else(too_big)?;
        let free = ready.checked_add(cap * 4).ok_or_else(too_big)?;
        let rows = free.checked_add(cap * 4).ok_or_else(too_big)?;
        let data = rows
            .checked_add(c.rows as usize * 4)
            .and_then(|n| n.checked_next_multiple_of(SLOT_ALIGN))
            .ok_or_else(too_big)?;
        let size = cap
            .checked_mul(c.slot_size as usize)
            .and_then(|n| n.checked_add(data))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        Ok(QueueLayout {
            config,
            ready,
            free,
            rows,
            data,
            size,
        })
    }

    fn params(&self) -> [u64; 8] {
        let c = &self.config;
        let mut p = [0u64; 8];
        p[param::CAPACITY] = u64::from(c.capacity);
        p[param::SLOT_SIZE] = u64::from(c.slot_size);
        p[param::ROWS] = u64::from(c.rows);
        p[param::MODE] = if c.acknowledged {
            mode::ACKNOWLEDGED
        } else {
            mode::AT_MOST_ONCE
        };
        p[param::MAX_DELIVERIES] = u64::from(c.max_deliveries);
        p
    }

    /// The layout that a header's `params` record, validated, and checked to fit in the
    /// segment's payload of `payload_len` bytes.
    pub(crate) fn from_header(p: &[u64; 8], payload_len: usize) -> Result<QueueLayout, String> {
        let layout = Self::from_params(p)?;
        if layout.size > payload_len {
            return Err(format!(
                "its configuration needs {} payload bytes, it has {payload_len}",
                layout.size
            ));
        }
        Ok(layout)
    }

    /// The configuration recorded in a header's `params`, validated.
    fn from_params(p: &[u64; 8]) -> Result<QueueLayout, String> {
        let small = |i: usize, what: &str| {
            u32::try_from(p[i]).map_err(|_| format!("{what} {} does not fit in 32 bits", p[i]))
        };
        let acknowledged = match p[param::MODE] {
            mode::AT_MOST_ONCE => false,
            mode::ACKNOWLEDGED => true,
            m => return Err(format!("unknown delivery mode {m}")),
        };
        QueueLayout::new(QueueConfig {
            capacity: small(param::CAPACITY, "capacity")?,
            slot_size: small(param::SLOT_SIZE, "slot size")?,
            rows: small(param::ROWS, "rows")?,
            acknowledged,
            max_deliveries: small(param::MAX_DELIVERIES, "delivery limit")?,
        })
    }
}

/// What an opener asks of a queue. `None` fields take the queue's value (or, when creating,
/// the default); a `Some` that an existing queue does not match is a
/// [`QueueOpenError::Mismatch`].
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Items at most (default 64); on an existing queue, a minimum.
    pub capacity: Option<u32>,
    /// Bytes per item at least (rounded up to a multiple of 64).
    pub slot_size: Option<u32>,
    /// Participant rows: producers and consumers at once (default 32).
    pub rows: Option<u32>,
    /// Acknowledged delivery (default `false`: at most once).
    pub acknowledged: Option<bool>,
    /// Deliveries before an unacknowledged item is dead-lettered (default 3).
    pub max_deliveries: Option<u32>,
    /// File mode when creating (default `0o600`).
    pub mode: Option<u32>,
    /// Lifetime when creating (default scoped).
    pub lifetime: Option<Lifetime>,
    /// How long to wait for a segment that is not ready (default 500 ms).
    pub open_timeout: Option<Duration>,
}

/// Why a queue could not be opened, created or joined.
#[derive(Debug, thiserror::Error)]
pub enum QueueOpenError {
    /// The segment could not be opened or created.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The requested configuration is invalid.
    #[error("invalid queue configuration: {0}")]
    Config(String),
    /// The existing queue does not match what was asked for.
    #[error(
        "queue {name:?} does not match the requested {what}: asked for {requested}, it has {found}"
    )]
    Mismatch {
        /// The queue.
        name: Name,
        /// Which setting.
        what: &'static str,
        /// What the opener asked for.
        requested: String,
        /// What the queue has.
        found: String,
    },
    /// Every participant row is held by a live participant.
    #[error("queue {name:?} already has its maximum of {max} participants")]
    TooManyParticipants {
        /// The queue.
        name: Name,
        /// The maximum.
        max: u32,
    },
    /// The queue's memory is damaged.
    #[error("queue {name:?} is corrupt: {reason}")]
    Corrupt {
        /// The queue.
        name: Name,
        /// What is wrong.
        reason: String,
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

/// A queue's counters (what tools show), read without the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Items put.
    pub put: u64,
    /// Deliveries (redeliveries included).
    pub taken: u64,
    /// Items done (acknowledged, or read at most once).
    pub done: u64,
    /// Items lost with at-most-once consumers that died holding them.
    pub lost: u64,
    /// Items delivered again (refused, or held by a dead consumer).
    pub redelivered: u64,
    /// Items given up after the delivery limit.
    pub dead_lettered: u64,
    /// Reservations given back unwritten (dropped, or held by producers that died).
    pub abandoned: u64,
    /// Rebuilds after a lock holder died.
    pub repairs: u64,
}

/// A participant of a queue: it may put and get. Each handle holds a participant row and its
/// liveness lease; [`Sync`], so threads may share it.
pub struct RawQueue {
    // Field order: `core` points into `segment`; it has no Drop and is declared first.
    core: QueueCore<RobustMutex>,
    layout: QueueLayout,
    row: u32,
    born: Born,
    /// When this handle last looked for dead rows (monotonic ns).
    last_check: AtomicU64,
    created: bool,
    _lease: Lease,
    segment: Segment,
}

impl fmt::Debug for RawQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawQueue")
            .field("name", self.segment.name())
            .field("config", &self.layout.config)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

/// How often a handle whose non-blocking call found the queue full or empty looks for dead
/// participants at most.
const CHECK_NS: u64 = 50_000_000;

fn round_up_slot(n: u32) -> Option<u32> {
    n.max(1).checked_next_multiple_of(SLOT_ALIGN as u32)
}

impl RawQueue {
    /// Opens the queue `name` of items described by `type_info`, creating it if it does not
    /// exist, and joins it as a participant.
    pub fn open_or_create(
        name: &Name,
        type_info: &TypeInfo,
        opts: &QueueOptions,
    ) -> Result<RawQueue, QueueOpenError> {
        let want = opts
            .slot_size
            .unwrap_or(type_info.size.min(u64::from(u32::MAX)) as u32);
        let slot_size = round_up_slot(want)
            .ok_or_else(|| QueueOpenError::Config(format!("a slot size of {want}")))?;
        let config = QueueConfig {
            capacity: opts.capacity.unwrap_or(64),
            slot_size,
            rows: opts.rows.unwrap_or(32),
            acknowledged: opts.acknowledged.unwrap_or(false),
            max_deliveries: opts.max_deliveries.unwrap_or(3),
        };
        let layout = QueueLayout::new(config).map_err(QueueOpenError::Config)?;
        let mut create = CreateOptions::new(Kind::Queue, type_info.clone(), layout.size);
        create.mode = opts.mode.unwrap_or(0o600);
        create.lifetime = opts.lifetime.unwrap_or_default();
        create.params = layout.params();
        let (segment, created) =
            Segment::open_or_create(name, &expect(type_info, opts), &create, |payload| {
                // SAFETY: the zero-filled, page-aligned payload of a segment nobody else can
                // see yet; the mutex sits at offset 0, `RobustMutex::SIZE <= HEADER_OFFSET`.
                unsafe { RobustMutex::init(payload.as_mut_ptr().cast()) }
                    .expect("initialising a process-shared robust mutex on fresh memory");
                init_rings(payload, &layout);
            })?;
        Self::attach(segment, created, opts, want)
    }

    /// Opens the existing queue `name` and joins it.
    pub fn open(
        name: &Name,
        type_info: &TypeInfo,
        opts: &QueueOptions,
    ) -> Result<RawQueue, QueueOpenError> {
        let want = opts
            .slot_size
            .unwrap_or(type_info.size.min(u64::from(u32::MAX)) as u32);
        let segment = Segment::open(name, &expect(type_info, opts))?;
        Self::attach(segment, false, opts, want)
    }

    fn attach(
        segment: Segment,
        created: bool,
        opts: &QueueOptions,
        want_slot: u32,
    ) -> Result<RawQueue, QueueOpenError> {
        let name = segment.name().clone();
        let layout = QueueLayout::from_header(&segment.snapshot().params, segment.payload_len())
            .map_err(|reason| QueueOpenError::Corrupt {
                name: name.clone(),
                reason,
            })?;
        check(&name, opts, &layout.config, want_slot)?;
        let base = segment.payload_ptr();
        let at = |off: usize| {
            // SAFETY: every offset of the layout lies inside the payload (`layout.size` fits,
            // checked above).
            unsafe { base.add(off) }
        };
        let counters = NonNull::from(&segment.counters()[0]);
        // SAFETY: the layout, validated against the payload's length, places each part inside
        // the mapping at an offset aligned for it (64-aligned words, 16-byte entries from 256,
        // u32 rings); the creator initialised the mutex and the words are atomics valid for
        // any bit pattern. `RawQueue` keeps `segment` alive as long as `core`.
        let core = unsafe {
            QueueCore::from_raw(
                at(HEADER_OFFSET).cast::<QueueWords>(),
                at(SLOTS_OFFSET).cast::<SlotEntry>(),
                at(layout.ready).cast(),
                at(layout.free).cast(),
                at(layout.rows).cast(),
                counters,
                base.cast::<RobustMutex>(),
                layout.config,
            )
        };
        let (row, lease) = join(&core, &segment)?;
        Ok(RawQueue {
            core,
            layout,
            row,
            born: Born::now(),
            last_check: AtomicU64::new(monotonic_ns()),
            created,
            _lease: lease,
            segment,
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// Whether this handle created the queue.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        self.core.config()
    }

    /// The layout.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// This handle's participant row.
    pub fn row(&self) -> u32 {
        self.row
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Items ready now.
    pub fn len(&self) -> u32 {
        self.core.len()
    }

    /// Whether no item is ready now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// The counters.
    pub fn stats(&self) -> QueueStats {
        let c = |i| self.core.counter(i).load(Ordering::Relaxed);
        QueueStats {
            put: c(counter::PUT),
            taken: c(counter::TAKEN),
            done: c(counter::DONE),
            lost: c(counter::LOST),
            redelivered: c(counter::REDELIVERED),
            dead_lettered: c(counter::DEAD_LETTERED),
            abandoned: c(counter::ABANDONED),
            repairs: c(counter::REPAIRS),
        }
    }

    /// Closes the queue for every participant: puts fail, gets drain what is left.
    pub fn close(&self) -> Result<(), QueueError> {
        self.born.check()?;
        self.core.close(&Futex)
    }

    /// Reclaims the rows of participants that died; returns what their items became.
    pub fn reclaim_dead(&self) -> Reclaimed {
        let mut total = Reclaimed::default();
        let fd = self.segment.fd();
        for r in 0..self.core.config().rows {
            if r == self.row || self.core.row(r).load(Ordering::Acquire) == 0 {
                continue;
            }
            if liveness::is_held(fd, lease::queue_row(r)).unwrap_or(true) {
                continue;
            }
            if let Ok(Some(_lease)) = Lease::try_acquire(fd, lease::queue_row(r)) {
                if self.core.row(r).load(Ordering::Acquire) != 0 {
                    if let Ok(got) = self.core.reclaim_row(r, &Futex) {
                        tracing::info!(queue = %self.name(), row = r, ?got, "reclaimed a dead participant");
                        total.abandoned += got.abandoned;
                        total.lost += got.lost;
                        total.redelivered += got.redelivered;
                        total.dead_lettered += got.dead_lettered;
                    }
                }
            }
        }
        total
    }

    /// `Err` in a forked child of the process that opened this handle.
    pub fn check_fork(&self) -> Result<(), crate::fork::UsedAfterFork> {
        self.born.check()
    }

    /// The word consumers sleep on and their count, for a wait set (see [`crate::waitset`]).
    pub(crate) fn not_empty_words(&self) -> crate::waitset::Words<'_> {
        let w = self.core.words();
        crate::waitset::Words {
            word: &w.not_empty,
            sleepers: &w.empty_sleepers,
            light: None,
        }
    }

    /// What a blocked consumer does between sleeps: looks for dead participants (whose items
    /// come back) if a lock repair asked for it or a while has passed since the last look.
    pub(crate) fn look_for_dead(&self) {
        self.check_peers(true);
    }

    /// Looks for dead rows if a lock repair asked for it, or (`idle`) if this handle has not
    /// looked for a while.
    fn check_peers(&self, idle: bool) {
        // A load first: the common case (nothing suspect) writes nothing to the shared line.
        let w = &self.core.words().suspect;
        let suspect = w.load(Ordering::Relaxed) != 0 && w.swap(0, Ordering::Relaxed) != 0;
        if !suspect && !idle {
            return;
        }
        let now = monotonic_ns();
        let due = now.saturating_sub(self.last_check.load(Ordering::Relaxed)) >= CHECK_NS;
        if suspect || due {
            self.last_check.store(now, Ordering::Relaxed);
            self.reclaim_dead();
        }
    }

    fn data_ptr(&self, slot: u32) -> NonNull<u8> {
        assert!(slot < self.layout.config.capacity);
        let off = self.layout.data + slot as usize * self.layout.config.slot_size as usize;
        // SAFETY: `slot < capacity`, so the slot's bytes lie inside the layout's `size`, which
        // fits in the payload.
        unsafe { self.segment.payload_ptr().add(off) }
    }

    /// Bytes per data slot.
    pub fn slot_size(&self) -> usize {
        self.layout.config.slot_size as usize
    }

    /// Reserves a slot to write an item into, waiting at most `timeout` for one (`Some(ZERO)`:
    /// do not wait).
    pub fn reserve(&self, timeout: Option<Duration>) -> Result<RawReservation<'_>, QueueError> {
        self.born.check()?;
        self.check_peers(false);
        let slot = if timeout == Some(Duration::ZERO) {
            match self.core.try_reserve(self.row)? {
                Some(s) => s,
                None => {
                    self.check_peers(true);
                    self.core.try_reserve(self.row)?.ok_or(QueueError::Full)?
                }
            }
        } else {
            self.core
                .reserve(self.row, Deadline::after(timeout), &Futex, || {
                    self.check_peers(true)
                })?
        };
        Ok(RawReservation {
            queue: self,
            slot,
            done: false,
        })
    }

    /// Copies `item` (at most [`slot_size`](Self::slot_size) bytes; the rest of the slot keeps
    /// older bytes) into a free slot and puts it in line, all in one lock hold; waits at most
    /// `timeout` for room (`Some(ZERO)`: do not wait). For small items: the copy holds the lock.
    pub fn put_copy(&self, item: &[u8], timeout: Option<Duration>) -> Result<(), QueueError> {
        self.born.check()?;
        self.check_peers(false);
        let n = item.len().min(self.slot_size());
        let mut write = |slot: u32| {
            // SAFETY: the slot lies inside the mapping and is RESERVED by this row under the
            // lock we hold: nobody else reads or writes it; `item` is a private buffer.
            unsafe { std::ptr::copy_nonoverlapping(item.as_ptr(), self.data_ptr(slot).as_ptr(), n) }
        };
        if timeout == Some(Duration::ZERO) {
            if self.core.try_put_inline(self.row, &mut write, &Futex)? {
                return Ok(());
            }
            self.check_peers(true);
            return match self.core.try_put_inline(self.row, &mut write, &Futex)? {
                true => Ok(()),
                false => Err(QueueError::Full),
            };
        }
        self.core.put_inline(
            self.row,
            &mut write,
            Deadline::after(timeout),
            &Futex,
            || self.check_peers(true),
        )
    }

    /// Takes the next item, copies its first `out.len()` bytes into `out` and finishes it, all
    /// in one lock hold (in acknowledged mode: acknowledged at once); waits at most `timeout`.
    /// Returns the item's delivery count.
    pub fn get_copy(&self, out: &mut [u8], timeout: Option<Duration>) -> Result<u32, QueueError> {
        self.born.check()?;
        self.check_peers(false);
        let n = out.len().min(self.slot_size());
        let mut deliveries = 0;
        let mut read = |t: Taken| {
            // SAFETY: the slot lies inside the mapping and is TAKEN by this row under the lock
            // we hold: nobody else writes it; `out` is a private buffer of at least `n` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data_ptr(t.slot).as_ptr(), out.as_mut_ptr(), n)
            };
            deliveries = t.deliveries;
        };
        if timeout == Some(Duration::ZERO) {
            if !self.core.try_get_inline(self.row, &mut read, &Futex)? {
                self.check_peers(true);
                if !self.core.try_get_inline(self.row, &mut read, &Futex)? {
                    return Err(QueueError::Empty);
                }
            }
        } else {
            self.core.get_inline(
                self.row,
                &mut read,
                Deadline::after(timeout),
                &Futex,
                || self.check_peers(true),
            )?;
        }
        Ok(deliveries)
    }

    /// Takes the next item, waiting at most `timeout` for one (`Some(ZERO)`: do not wait).
    pub fn take(&self, timeout: Option<Duration>) -> Result<RawDelivery<'_>, QueueError> {
        self.born.check()?;
        self.check_peers(false);
        let taken = if timeout == Some(Duration::ZERO) {
            match self.core.try_take(self.row)? {
                Some(t) => t,
                None => {
                    self.check_peers(true);
                    self.core.try_take(self.row)?.ok_or(QueueError::Empty)?
                }
            }
        } else {
            self.core
                .take(self.row, Deadline::after(timeout), &Futex, || {
                    self.check_peers(true)
                })?
        };
        Ok(RawDelivery {
            queue: self,
            taken,
            done: false,
        })
    }
}

impl Drop for RawQueue {
    fn drop(&mut self) {
        if self.born.is_current() {
            // Nothing can be held (reservations and deliveries borrow the handle) unless one was
            // leaked: give it back as a dead participant's would be.
            let _ = self.core.reclaim_row(self.row, &Futex);
        }
    }
}

fn expect(type_info: &TypeInfo, opts: &QueueOptions) -> Expect {
    let mut e = Expect::new(Kind::Queue, type_info.clone());
    if let Some(t) = opts.open_timeout {
        e.timeout = t;
    }
    e
}

/// Writes the free ring of a new queue: every slot, in order.
fn init_rings(payload: &mut [u8], layout: &QueueLayout) {
    let cap = layout.config.capacity;
    for i in 0..cap {
        let off = layout.free + i as usize * 4;
        payload[off..off + 4].copy_from_slice(&i.to_ne_bytes());
    }
    let words = HEADER_OFFSET + std::mem::offset_of!(QueueWords, free_tail);
    payload[words..words + 8].copy_from_slice(&u64::from(cap).to_ne_bytes());
}

fn check(
    name: &Name,
    opts: &QueueOptions,
    found: &QueueConfig,
    want_slot: u32,
) -> Result<(), QueueOpenError> {
    let mismatch = |what: &'static str, requested: String, found: String| {
        Err(QueueOpenError::Mismatch {
            name: name.clone(),
            what,
            requested,
            found,
        })
    };
    if want_slot > found.slot_size {
        return mismatch(
            "slot size",
            format!("at least {want_slot}"),
            found.slot_size.to_string(),
        );
    }
    if let Some(a) = opts.acknowledged {
        if a != found.acknowledged {
            let word = |a: bool| if a { "acknowledged" } else { "at-most-once" }.to_owned();
            return mismatch("delivery mode", word(a), word(found.acknowledged));
        }
    }
    if let Some(c) = opts.capacity {
        if c > found.capacity {
            return mismatch(
                "capacity",
                format!("at least {c}"),
                found.capacity.to_string(),
            );
        }
    }
    Ok(())
}

/// Takes a free participant row (reclaiming a dead holder's), with its lease.
/// The holders of a queue's lock: participant rows, holder id = row + 1, alive while the row's
/// lease is held.
struct QueueRows {
    /// The segment's file, to ask about leases (a descriptor that holds none itself).
    fd: std::os::fd::OwnedFd,
    me: u32,
    rows: u32,
}

impl Holders for QueueRows {
    fn me(&self) -> u32 {
        self.me
    }

    fn is_alive(&self, id: u32) -> bool {
        if id == 0 || id > self.rows {
            return false; // no such row: another process wrote the word
        }
        liveness::is_held(std::os::fd::AsFd::as_fd(&self.fd), lease::queue_row(id - 1))
            .unwrap_or(true)
    }
}

fn join(core: &QueueCore<RobustMutex>, segment: &Segment) -> Result<(u32, Lease), QueueOpenError> {
    let rows = core.config().rows;
    for r in 0..rows {
        let lease = Lease::try_acquire(segment.fd(), lease::queue_row(r)).map_err(|source| {
            QueueOpenError::Os {
                op: "taking a queue participant lease",
                source,
            }
        })?;
        let Some(lease) = lease else { continue };
        // From now on this handle locks as row r (reclaiming below may lock already).
        let fd = segment
            .fd()
            .try_clone_to_owned()
            .map_err(|source| QueueOpenError::Os {
                op: "duplicating the queue's descriptor",
                source,
            })?;
        core.set_holders(Box::new(QueueRows {
            fd,
            me: r + 1,
            rows,
        }));
        if core.row(r).load(Ordering::Acquire) != 0 {
            let got = core
                .reclaim_row(r, &Futex)
                .map_err(|e| QueueOpenError::Corrupt {
                    name: segment.name().clone(),
                    reason: e.to_string(),
                })?;
            tracing::info!(queue = %segment.name(), row = r, ?got, "reclaimed a dead participant");
        }
        core.row(r)
            .store(std::process::id().max(1), Ordering::Release);
        return Ok((r, lease));
    }
    Err(QueueOpenError::TooManyParticipants {
        name: segment.name().clone(),
        max: rows,
    })
}

/// A reserved slot: write the item, then [`commit`](Self::commit). Dropping it uncommitted gives
/// the slot back.
pub struct RawReservation<'q> {
    queue: &'q RawQueue,
    slot: u32,
    done: bool,
}

impl fmt::Debug for RawReservation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawReservation")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl RawReservation<'_> {
    /// The slot's bytes, to write the item into (they hold an earlier item's bytes).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.queue.slot_size();
        // SAFETY: the slot lies inside the mapping (checked in `data_ptr`), which lives as long
        // as the queue this borrows. It is RESERVED for this handle's row, so no other
        // reservation or delivery of any handle refers to it: no other process touches it
        // (unless it breaks the protocol; see the trust model), and in this process only this
        // reservation does; `&mut self` makes this the only reference made through it.
        unsafe { std::slice::from_raw_parts_mut(self.queue.data_ptr(self.slot).as_ptr(), len) }
    }

    /// The slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Puts the item in line.
    pub fn commit(mut self) -> Result<(), QueueError> {
        self.done = true;
        self.queue.born.check()?;
        self.queue.core.commit(self.queue.row, self.slot, &Futex)
    }
}

impl Drop for RawReservation<'_> {
    fn drop(&mut self) {
        if !self.done && self.queue.born.is_current() {
            let _ = self.queue.core.abandon(self.queue.row, self.slot, &Futex);
        }
    }
}

/// A taken item: read it in place, then [`ack`](Self::ack) (or [`refuse`](Self::refuse)).
///
/// Dropped without either: in acknowledged mode the item is refused (delivered again, or
/// dead-lettered at the limit); in at-most-once mode it is done.
pub struct RawDelivery<'q> {
    queue: &'q RawQueue,
    taken: Taken,
    done: bool,
}

impl fmt::Debug for RawDelivery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDelivery")
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl RawDelivery<'_> {
    /// The item's slot bytes.
    pub fn bytes(&self) -> &[u8] {
        let len = self.queue.slot_size();
        // SAFETY: the slot lies inside the mapping, which lives as long as the queue this
        // borrows. It is TAKEN by this handle's row until this delivery is acked or refused, so
        // nobody writes it (short of a peer breaking the protocol; see the trust model); only
        // shared references are made through a delivery.
        unsafe { std::slice::from_raw_parts(self.queue.data_ptr(self.taken.slot).as_ptr(), len) }
    }

    /// How many times the item has been delivered, this time included (1: the first).
    pub fn deliveries(&self) -> u32 {
        self.taken.deliveries
    }

    /// The slot.
    pub fn slot(&self) -> u32 {
        self.taken.slot
    }

    /// The item is done: its slot is freed.
    pub fn ack(mut self) -> Result<(), QueueError> {
        self.done = true;
        self.queue.born.check()?;
        self.queue
            .core
            .finish(self.queue.row, self.taken.slot, &Futex)
    }

    /// Gives the item back to be delivered again (or dead-lettered at the delivery limit).
    pub fn refuse(mut self) -> Result<Reclaimed, QueueError> {
        self.done = true;
        self.queue.born.check()?;
        self.queue
            .core
            .refuse(self.queue.row, self.taken.slot, &Futex)
    }
}

impl Drop for RawDelivery<'_> {
    fn drop(&mut self) {
        if self.done || !self.queue.born.is_current() {
            return;
        }
        let (row, slot) = (self.queue.row, self.taken.slot);
        if self.queue.config().acknowledged {
            let _ = self.queue.core.refuse(row, slot, &Futex);
        } else {
            let _ = self.queue.core.finish(row, slot, &Futex);
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RawQueue>();
};

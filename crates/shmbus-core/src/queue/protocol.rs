//! The queue protocol over its words: slot states, the ready and free rings, participant rows,
//! notifications. Runs on a segment's payload (`RawQueue`) and, under loom, on the heap.
//!
//! Every change to the slot table and the rings is made under one robust lock. The slot
//! **state words** are the truth; the two rings only cache which slots are ready (in order) and
//! which are free, so a holder that dies half-way through an update leaves nothing that the
//! next locker cannot rebuild from the state words alone ([`QueueCore::rebuild`]). Every
//! operation under the lock changes at most one state word, with one store, and that store is
//! its commit point.

use std::ptr::NonNull;
use std::time::Duration;

use crate::futex::Notifier;
use crate::primitive::{fence, AtomicU32, AtomicU64, Ordering};
use crate::sync::{Acquired, Holders, LockError, RobustMutex};
use crate::time::Deadline;
use crate::wire::queue::{counter, slot};

/// A point where a loom model may stop the thread as if its process were killed.
macro_rules! step {
    () => {
        #[cfg(all(test, loom))]
        crate::queue::loom_tests::crash_point();
    };
}

/// How often a blocked putter or getter checks on its peers (dead participants' items).
pub(crate) const CHECK_EVERY: Option<Duration> = if cfg!(loom) {
    None
} else {
    Some(Duration::from_millis(50))
};

/// The lock that guards the slot table and the rings: a robust mutex, or loom's mock of one.
pub(crate) trait ProtocolLock {
    /// Locks as `h.me()`, waiting at most `timeout`.
    fn lock(&self, h: &dyn Holders, timeout: Option<Duration>) -> Result<Acquired, LockError>;
    /// Unlocks.
    ///
    /// # Safety
    ///
    /// The calling thread holds the lock as `h.me()`.
    unsafe fn unlock(&self, h: &dyn Holders);
    /// Marks the guarded data repaired after [`Acquired::OwnerDied`].
    ///
    /// # Safety
    ///
    /// The calling thread holds the lock, got `OwnerDied`, and repaired the data.
    unsafe fn make_consistent(&self);
}

impl ProtocolLock for RobustMutex {
    fn lock(&self, h: &dyn Holders, timeout: Option<Duration>) -> Result<Acquired, LockError> {
        RobustMutex::lock(self, h, timeout)
    }
    unsafe fn unlock(&self, h: &dyn Holders) {
        // SAFETY: the caller holds the mutex as `h.me()`.
        unsafe { RobustMutex::unlock(self, h) }
    }
    unsafe fn make_consistent(&self) {
        // SAFETY: the caller holds the mutex after OwnerDied and repaired the data. glibc fails
        // only for a mutex not in the owner-died state, which it is while we hold it.
        let _ = unsafe { RobustMutex::make_consistent(self) };
    }
}

/// Why a queue operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The timeout passed.
    #[error("timed out")]
    Timeout,
    /// Every slot holds an item or is being written or worked on (non-blocking put).
    #[error("the queue is full")]
    Full,
    /// No item is ready (non-blocking get).
    #[error("the queue is empty")]
    Empty,
    /// The queue was closed: no more puts; gets drain what is left, then see this.
    #[error("the queue is closed")]
    Closed,
    /// The queue's lock failed (not recoverable: a previous repair itself failed).
    #[error("the queue lock failed: {0}")]
    Lock(#[from] LockError),
    /// The queue's memory is inconsistent even after a rebuild (a peer wrote into it).
    #[error("the queue is corrupt: {0}")]
    Corrupt(String),
    /// The item is no longer this participant's: its row was reclaimed as dead.
    #[error("the item was reclaimed from this participant")]
    NotOwner,
    /// The handle was made before a fork and this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] crate::fork::UsedAfterFork),
}

/// A queue's configuration, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Items the queue holds at most (slots).
    pub capacity: u32,
    /// Bytes per data slot (a multiple of 64).
    pub slot_size: u32,
    /// Participant rows.
    pub rows: u32,
    /// Acknowledged delivery (else at most once).
    pub acknowledged: bool,
    /// Deliveries after which an unacknowledged item is dead-lettered (acknowledged mode).
    pub max_deliveries: u32,
}

/// The queue's words at `wire::queue::HEADER_OFFSET`: three cache lines.
#[repr(C, align(64))]
pub(crate) struct QueueWords {
    // Line 0, under the lock.
    pub(crate) head: AtomicU64,
    pub(crate) tail: AtomicU64,
    pub(crate) free_head: AtomicU64,
    pub(crate) free_tail: AtomicU64,
    pub(crate) next_seq: AtomicU64,
    pub(crate) closed: AtomicU32,
    /// Set when a locker found the holder dead: participants should look for dead rows.
    pub(crate) suspect: AtomicU32,
    _pad0: [u32; 4],
    // Line 1, under the lock: the journal of the counter update that goes with a commit.
    /// Counter index + 1 (0: no entry); written last, cleared after the counter.
    pub(crate) journal_counter: AtomicU32,
    /// The slot whose state word commits the operation.
    pub(crate) journal_slot: AtomicU32,
    /// The state word the slot holds once the operation committed.
    pub(crate) journal_word: AtomicU64,
    /// The counter's value once the operation is done.
    pub(crate) journal_value: AtomicU64,
    _pad_j: [u32; 10],
    // Line 2: getters sleep here.
    pub(crate) not_empty: AtomicU32,
    pub(crate) empty_sleepers: AtomicU32,
    _pad1: [u32; 14],
    // Line 3: putters sleep here.
    pub(crate) not_full: AtomicU32,
    pub(crate) full_sleepers: AtomicU32,
    _pad2: [u32; 14],
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<QueueWords>() == 256);
#[cfg(not(loom))]
const _: () = assert!(
    crate::wire::queue::HEADER_OFFSET + size_of::<QueueWords>() == crate::wire::queue::SLOTS_OFFSET
);

impl QueueWords {
    #[cfg(loom)]
    pub(crate) fn new() -> QueueWords {
        QueueWords {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            free_head: AtomicU64::new(0),
            free_tail: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            closed: AtomicU32::new(0),
            suspect: AtomicU32::new(0),
            _pad0: [0; 4],
            journal_counter: AtomicU32::new(0),
            journal_slot: AtomicU32::new(0),
            journal_word: AtomicU64::new(0),
            journal_value: AtomicU64::new(0),
            _pad_j: [0; 10],
            not_empty: AtomicU32::new(0),
            empty_sleepers: AtomicU32::new(0),
            _pad1: [0; 14],
            not_full: AtomicU32::new(0),
            full_sleepers: AtomicU32::new(0),
            _pad2: [0; 14],
        }
    }
}

/// One slot table entry: the state word and the item's sequence number (its place in line).
#[repr(C)]
pub(crate) struct SlotEntry {
    pub(crate) word: AtomicU64,
    pub(crate) seq: AtomicU64,
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<SlotEntry>() == crate::wire::queue::SLOT_ENTRY_SIZE);

const STATE_MASK: u64 = 0xff;
const ROW_MASK: u64 = 0x00ff_ffff;

fn word(state: u64, row: u32, deliveries: u32) -> u64 {
    state
        | ((u64::from(row) & ROW_MASK) << slot::ROW_SHIFT)
        | (u64::from(deliveries) << slot::DELIVERIES_SHIFT)
}
fn state_of(w: u64) -> u64 {
    w & STATE_MASK
}
fn row_of(w: u64) -> u32 {
    ((w >> slot::ROW_SHIFT) & ROW_MASK) as u32
}
fn deliveries_of(w: u64) -> u32 {
    (w >> slot::DELIVERIES_SHIFT) as u32
}

/// What a take hands out: a slot and how many times its item has been delivered (1: first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The slot.
    pub slot: u32,
    /// Deliveries of the item, this one included.
    pub deliveries: u32,
}

/// What happened to an item given back or held by a dead participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reclaimed {
    /// Reservations freed.
    pub abandoned: u32,
    /// Items lost (at-most-once).
    pub lost: u32,
    /// Items queued again.
    pub redelivered: u32,
    /// Items dead-lettered.
    pub dead_lettered: u32,
}

/// A view of a queue's words. Copyable pointers; the owner keeps the memory alive.
pub(crate) struct QueueCore<L> {
    words: NonNull<QueueWords>,
    slots: NonNull<SlotEntry>,
    ready: NonNull<AtomicU32>,
    free: NonNull<AtomicU32>,
    rows: NonNull<AtomicU32>,
    counters: NonNull<AtomicU64>,
    lock: NonNull<L>,
    cfg: QueueConfig,
    /// Who holds the lock: this handle's participant row, set once it has one.
    holders: std::sync::OnceLock<Box<dyn Holders + Send + Sync>>,
}

/// The holders before a handle has its row (and in loom models, whose lock ignores them).
struct NoRow;

impl Holders for NoRow {
    fn me(&self) -> u32 {
        ID_BEFORE_JOIN
    }
    fn is_alive(&self, _: u32) -> bool {
        true
    }
}

/// The holder id of a handle that has no participant row yet (never a row's: rows are 1-based
/// and far fewer).
const ID_BEFORE_JOIN: u32 = (1 << 31) - 1;

// SAFETY: the view only hands out shared references to atomics (and to the lock, which is
// `Sync`); the memory it points to is owned by whoever made it and outlives it.
unsafe impl<L: Sync> Send for QueueCore<L> {}
// SAFETY: as above.
unsafe impl<L: Sync> Sync for QueueCore<L> {}

/// The lock, held; unlocks on drop (on the thread that locked: it is neither `Send` nor `Sync`).
pub(crate) struct Locked<'a, L: ProtocolLock> {
    core: &'a QueueCore<L>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<L: ProtocolLock> Drop for Locked<'_, L> {
    fn drop(&mut self) {
        // SAFETY: a `Locked` exists only after a successful lock on this thread (it is not
        // `Send`), and is dropped once.
        unsafe { self.core.lock().unlock(self.core.holders()) }
    }
}

/// Limits the rebuild-and-retry of an operation that found the rings inconsistent.
const ATTEMPTS: u32 = 2;

impl<L: ProtocolLock> QueueCore<L> {
    /// A view of the queue words at the given places.
    ///
    /// # Safety
    ///
    /// Each pointer addresses live, aligned memory of its type (`slots`, `ready` and `free`
    /// `cfg.capacity` entries, `rows` `cfg.rows` entries, `counters` 8) initialised as atomics
    /// (zero) and an initialised lock, all of which outlive the view and are only accessed
    /// through atomics and the lock.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn from_raw(
        words: NonNull<QueueWords>,
        slots: NonNull<SlotEntry>,
        ready: NonNull<AtomicU32>,
        free: NonNull<AtomicU32>,
        rows: NonNull<AtomicU32>,
        counters: NonNull<AtomicU64>,
        lock: NonNull<L>,
        cfg: QueueConfig,
    ) -> QueueCore<L> {
        QueueCore {
            words,
            slots,
            ready,
            free,
            rows,
            counters,
            lock,
            cfg,
            holders: std::sync::OnceLock::new(),
        }
    }

    /// Sets who this view locks as (once: the handle's participant row).
    pub(crate) fn set_holders(&self, h: Box<dyn Holders + Send + Sync>) {
        let _ = self.holders.set(h);
    }

    fn holders(&self) -> &dyn Holders {
        match self.holders.get() {
            Some(h) => &**h,
            None => &NoRow,
        }
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub(crate) fn words(&self) -> &QueueWords {
        // SAFETY: valid for the view's life (contract of `from_raw`).
        unsafe { self.words.as_ref() }
    }

    fn lock(&self) -> &L {
        // SAFETY: valid for the view's life (contract of `from_raw`).
        unsafe { self.lock.as_ref() }
    }

    /// Slot table entry `i`; `i` must be below the capacity (checked by every caller).
    fn slot(&self, i: u32) -> &SlotEntry {
        assert!(i < self.cfg.capacity);
        // SAFETY: in bounds (asserted), valid for the view's life.
        unsafe { &*self.slots.as_ptr().add(i as usize) }
    }

    fn ring_at(&self, ring: NonNull<AtomicU32>, n: u64) -> &AtomicU32 {
        let i = n % u64::from(self.cfg.capacity);
        // SAFETY: `i < capacity` entries, valid for the view's life.
        unsafe { &*ring.as_ptr().add(i as usize) }
    }

    /// Row `r`'s word (0: free, else the holder's pid); `r` must be below `rows`.
    pub(crate) fn row(&self, r: u32) -> &AtomicU32 {
        assert!(r < self.cfg.rows);
        // SAFETY: in bounds (asserted), valid for the view's life.
        unsafe { &*self.rows.as_ptr().add(r as usize) }
    }

    /// Counter `i` (see `wire::queue::counter`).
    pub(crate) fn counter(&self, i: usize) -> &AtomicU64 {
        assert!(i < 8);
        // SAFETY: 8 counters, valid for the view's life.
        unsafe { &*self.counters.as_ptr().add(i) }
    }

    /// Stores `new` into slot `i`'s state word (the commit point of an operation) and counts
    /// the operation in counter `c`, journaled so that a holder dying anywhere in between
    /// leaves the counter exact: the next locker redoes the counter store if the state word
    /// shows the commit ([`rebuild`](Self::rebuild)).
    fn commit_counted(&self, i: u32, new: u64, c: usize) {
        let w = self.words();
        let value = self.counter(c).load(Ordering::Relaxed).wrapping_add(1);
        w.journal_slot.store(i, Ordering::Relaxed);
        w.journal_word.store(new, Ordering::Relaxed);
        w.journal_value.store(value, Ordering::Relaxed);
        w.journal_counter.store(c as u32 + 1, Ordering::Relaxed);
        step!();
        self.slot(i).word.store(new, Ordering::Relaxed);
        step!();
        self.counter(c).store(value, Ordering::Relaxed);
        step!();
        w.journal_counter.store(0, Ordering::Relaxed);
    }

    /// Completes a journaled counter update that a dead holder left half done.
    fn replay_journal(&self) {
        let w = self.words();
        let c = w.journal_counter.load(Ordering::Relaxed);
        if c == 0 {
            return;
        }
        let i = w.journal_slot.load(Ordering::Relaxed);
        if (1..=8).contains(&c)
            && i < self.cfg.capacity
            && self.slot(i).word.load(Ordering::Relaxed) == w.journal_word.load(Ordering::Relaxed)
        {
            self.counter(c as usize - 1)
                .store(w.journal_value.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        w.journal_counter.store(0, Ordering::Relaxed);
    }

    /// Locks, rebuilding the rings if the last holder died.
    pub(crate) fn locked(&self, timeout: Option<Duration>) -> Result<Locked<'_, L>, QueueError> {
        let acquired = self
            .lock()
            .lock(self.holders(), timeout)
            .map_err(|e| match e {
                LockError::Timeout => QueueError::Timeout,
                e => QueueError::Lock(e),
            })?;
        let g = Locked {
            core: self,
            _not_send: std::marker::PhantomData,
        };
        if acquired == Acquired::OwnerDied {
            self.replay_journal();
            self.rebuild(&g);
            self.counter(counter::REPAIRS)
                .fetch_add(1, Ordering::Relaxed);
            self.words().suspect.store(1, Ordering::Relaxed);
            // SAFETY: we hold the lock after OwnerDied, and the rings were just rebuilt from
            // the state words, which are always consistent (single-store commits).
            unsafe { self.lock().make_consistent() };
        }
        Ok(g)
    }

    /// Rebuilds both rings from the slot state words: ready slots in sequence order, then free
    /// slots. Slots in other states (reserved, taken) stay with their rows.
    pub(crate) fn rebuild(&self, _g: &Locked<'_, L>) {
        let w = self.words();
        let mut ready = Vec::new();
        let mut free = Vec::new();
        let mut max_seq = None::<u64>;
        for i in 0..self.cfg.capacity {
            let s = self.slot(i);
            match state_of(s.word.load(Ordering::Relaxed)) {
                slot::READY => {
                    let seq = s.seq.load(Ordering::Relaxed);
                    max_seq = Some(max_seq.map_or(seq, |m| m.max(seq)));
                    ready.push((seq, i));
                }
                slot::FREE => free.push(i),
                _ => {}
            }
        }
        ready.sort_unstable();
        let head = w.head.load(Ordering::Relaxed);
        for (n, &(_, i)) in ready.iter().enumerate() {
            self.ring_at(self.ready, head.wrapping_add(n as u64))
                .store(i, Ordering::Relaxed);
        }
        w.tail
            .store(head.wrapping_add(ready.len() as u64), Ordering::Relaxed);
        let fh = w.free_head.load(Ordering::Relaxed);
        for (n, &i) in free.iter().enumerate() {
            self.ring_at(self.free, fh.wrapping_add(n as u64))
                .store(i, Ordering::Relaxed);
        }
        w.free_tail
            .store(fh.wrapping_add(free.len() as u64), Ordering::Relaxed);
        if let Some(m) = max_seq {
            if w.next_seq.load(Ordering::Relaxed) <= m {
                w.next_seq.store(m.wrapping_add(1), Ordering::Relaxed);
            }
        }
    }

    /// Pops the front of `ring` (`head`..`tail`) if it names a slot in `state`. `Ok(None)`:
    /// empty. Rebuilds and retries once on anything inconsistent.
    fn pop(
        &self,
        g: &Locked<'_, L>,
        ring: NonNull<AtomicU32>,
        head: &AtomicU64,
        tail: &AtomicU64,
        state: u64,
    ) -> Result<Option<u32>, QueueError> {
        for _ in 0..ATTEMPTS {
            let h = head.load(Ordering::Relaxed);
            let t = tail.load(Ordering::Relaxed);
            if h == t {
                return Ok(None);
            }
            if t.wrapping_sub(h) <= u64::from(self.cfg.capacity) {
                let i = self.ring_at(ring, h).load(Ordering::Relaxed);
                if i < self.cfg.capacity
                    && state_of(self.slot(i).word.load(Ordering::Relaxed)) == state
                {
                    head.store(h.wrapping_add(1), Ordering::Relaxed);
                    step!();
                    return Ok(Some(i));
                }
            }
            self.rebuild(g);
        }
        Err(QueueError::Corrupt(
            "a ring names a slot in the wrong state even after a rebuild".into(),
        ))
    }

    /// Appends slot `i` (already in the ring's state) to `ring`; rebuilds if there is no room
    /// (the rebuild takes `i` in, from its state word).
    fn push_back(
        &self,
        g: &Locked<'_, L>,
        ring: NonNull<AtomicU32>,
        head: &AtomicU64,
        tail: &AtomicU64,
        i: u32,
    ) {
        let h = head.load(Ordering::Relaxed);
        let t = tail.load(Ordering::Relaxed);
        if t.wrapping_sub(h) >= u64::from(self.cfg.capacity) {
            self.rebuild(g);
            return;
        }
        self.ring_at(ring, t).store(i, Ordering::Relaxed);
        step!();
        tail.store(t.wrapping_add(1), Ordering::Relaxed);
        step!();
    }

    /// Puts slot `i` (already READY) back at the front of the ready ring.
    fn push_front(&self, g: &Locked<'_, L>, i: u32) {
        let w = self.words();
        let h = w.head.load(Ordering::Relaxed);
        let t = w.tail.load(Ordering::Relaxed);
        if t.wrapping_sub(h) >= u64::from(self.cfg.capacity) {
            self.rebuild(g);
            return;
        }
        let h = h.wrapping_sub(1);
        self.ring_at(self.ready, h).store(i, Ordering::Relaxed);
        step!();
        w.head.store(h, Ordering::Relaxed);
        step!();
    }

    /// Frees slot `i`, counting it in counter `c`.
    fn free_slot(&self, g: &Locked<'_, L>, i: u32, c: usize) {
        self.commit_counted(i, word(slot::FREE, 0, 0), c);
        let w = self.words();
        self.push_back(g, self.free, &w.free_head, &w.free_tail, i);
    }

    /// Checks that slot `i` is in `state` for `row`; returns its word.
    fn owned(&self, i: u32, row: u32, state: u64) -> Result<u64, QueueError> {
        if i >= self.cfg.capacity {
            return Err(QueueError::NotOwner);
        }
        let w = self.slot(i).word.load(Ordering::Relaxed);
        if state_of(w) == state && row_of(w) == row {
            Ok(w)
        } else {
            Err(QueueError::NotOwner)
        }
    }

    // -----------------------------------------------------------------------------------------
    // Operations (each one lock hold)
    // -----------------------------------------------------------------------------------------

    /// Reserves a free slot for `row` to write an item into. `Ok(None)`: full.
    pub(crate) fn try_reserve(&self, row: u32) -> Result<Option<u32>, QueueError> {
        let g = self.locked(None)?;
        self.reserve_locked(&g, row)
    }

    /// Under the lock: takes a free slot for `row` (`Ok(None)`: full; `Closed` once closed).
    fn reserve_locked(&self, g: &Locked<'_, L>, row: u32) -> Result<Option<u32>, QueueError> {
        let w = self.words();
        if w.closed.load(Ordering::Relaxed) != 0 {
            return Err(QueueError::Closed);
        }
        let Some(i) = self.pop(g, self.free, &w.free_head, &w.free_tail, slot::FREE)? else {
            return Ok(None);
        };
        // Commit point: the slot is ours.
        self.slot(i)
            .word
            .store(word(slot::RESERVED, row, 0), Ordering::Relaxed);
        step!();
        Ok(Some(i))
    }

    /// Makes `row`'s reserved slot `i` a ready item at the back of the line.
    pub(crate) fn commit<N: Notifier>(
        &self,
        row: u32,
        i: u32,
        notifier: &N,
    ) -> Result<(), QueueError> {
        {
            let g = self.locked(None)?;
            self.owned(i, row, slot::RESERVED)?;
            let w = self.words();
            let seq = w.next_seq.load(Ordering::Relaxed);
            w.next_seq.store(seq.wrapping_add(1), Ordering::Relaxed);
            self.slot(i).seq.store(seq, Ordering::Relaxed);
            step!();
            // Commit point: the item is in line.
            self.commit_counted(i, word(slot::READY, 0, 0), counter::PUT);
            self.push_back(&g, self.ready, &w.head, &w.tail, i);
        }
        self.notify_not_empty(notifier);
        Ok(())
    }

    /// Gives `row`'s reserved slot `i` back unwritten.
    pub(crate) fn abandon<N: Notifier>(
        &self,
        row: u32,
        i: u32,
        notifier: &N,
    ) -> Result<(), QueueError> {
        {
            let g = self.locked(None)?;
            self.owned(i, row, slot::RESERVED)?;
            self.free_slot(&g, i, counter::ABANDONED);
        }
        self.notify_not_full(notifier);
        Ok(())
    }

    /// Reserve, write and commit in one lock hold, for small items: `write(slot)` runs under the
    /// lock. `Ok(false)`: full. A holder killed inside `write` leaves the slot reserved by its
    /// dead row, which reclaiming frees.
    pub(crate) fn try_put_inline<N: Notifier>(
        &self,
        row: u32,
        write: &mut dyn FnMut(u32),
        notifier: &N,
    ) -> Result<bool, QueueError> {
        {
            let g = self.locked(None)?;
            let Some(i) = self.reserve_locked(&g, row)? else {
                return Ok(false);
            };
            let w = self.words();
            write(i);
            step!();
            let seq = w.next_seq.load(Ordering::Relaxed);
            w.next_seq.store(seq.wrapping_add(1), Ordering::Relaxed);
            self.slot(i).seq.store(seq, Ordering::Relaxed);
            self.commit_counted(i, word(slot::READY, 0, 0), counter::PUT);
            self.push_back(&g, self.ready, &w.head, &w.tail, i);
        }
        self.notify_not_empty(notifier);
        Ok(true)
    }

    /// Take, read and finish in one lock hold, for small items: `read(taken)` runs under the
    /// lock. `Ok(false)`: empty (and not closed). A holder killed inside `read` leaves the item
    /// taken by its dead row: lost (at most once) or delivered again (acknowledged).
    pub(crate) fn try_get_inline<N: Notifier>(
        &self,
        row: u32,
        read: &mut dyn FnMut(Taken),
        notifier: &N,
    ) -> Result<bool, QueueError> {
        {
            let g = self.locked(None)?;
            let w = self.words();
            let Some(i) = self.pop(&g, self.ready, &w.head, &w.tail, slot::READY)? else {
                if w.closed.load(Ordering::Relaxed) != 0 {
                    return Err(QueueError::Closed);
                }
                return Ok(false);
            };
            let deliveries =
                deliveries_of(self.slot(i).word.load(Ordering::Relaxed)).saturating_add(1);
            self.commit_counted(i, word(slot::TAKEN, row, deliveries), counter::TAKEN);
            read(Taken {
                slot: i,
                deliveries,
            });
            step!();
            self.free_slot(&g, i, counter::DONE);
        }
        self.notify_not_full(notifier);
        Ok(true)
    }

    /// [`try_put_inline`](Self::try_put_inline), waiting for room until `deadline`.
    pub(crate) fn put_inline<N: Notifier>(
        &self,
        row: u32,
        write: &mut dyn FnMut(u32),
        deadline: Deadline,
        notifier: &N,
        idle: impl FnMut(),
    ) -> Result<(), QueueError> {
        let w = self.words();
        self.wait_for(
            &w.not_full,
            &w.full_sleepers,
            deadline,
            notifier,
            || Ok(self.try_put_inline(row, write, notifier)?.then_some(())),
            idle,
        )
    }

    /// [`try_get_inline`](Self::try_get_inline), waiting for an item until `deadline`.
    pub(crate) fn get_inline<N: Notifier>(
        &self,
        row: u32,
        read: &mut dyn FnMut(Taken),
        deadline: Deadline,
        notifier: &N,
        idle: impl FnMut(),
    ) -> Result<(), QueueError> {
        let w = self.words();
        self.wait_for(
            &w.not_empty,
            &w.empty_sleepers,
            deadline,
            notifier,
            || Ok(self.try_get_inline(row, read, notifier)?.then_some(())),
            idle,
        )
    }

    /// Takes the item at the front of the line for `row`. `Ok(None)`: empty (and not closed).
    pub(crate) fn try_take(&self, row: u32) -> Result<Option<Taken>, QueueError> {
        let g = self.locked(None)?;
        let w = self.words();
        let Some(i) = self.pop(&g, self.ready, &w.head, &w.tail, slot::READY)? else {
            if w.closed.load(Ordering::Relaxed) != 0 {
                return Err(QueueError::Closed);
            }
            return Ok(None);
        };
        let s = self.slot(i);
        let deliveries = deliveries_of(s.word.load(Ordering::Relaxed)).saturating_add(1);
        // Commit point: the item is this row's.
        self.commit_counted(i, word(slot::TAKEN, row, deliveries), counter::TAKEN);
        Ok(Some(Taken {
            slot: i,
            deliveries,
        }))
    }

    /// `row` is done with its taken slot `i` (acknowledged, or read in at-most-once mode).
    pub(crate) fn finish<N: Notifier>(
        &self,
        row: u32,
        i: u32,
        notifier: &N,
    ) -> Result<(), QueueError> {
        {
            let g = self.locked(None)?;
            self.owned(i, row, slot::TAKEN)?;
            self.free_slot(&g, i, counter::DONE);
        }
        self.notify_not_full(notifier);
        Ok(())
    }

    /// Gives a taken item back (under the lock): queued again at the front, or dead-lettered
    /// once it has been delivered `max_deliveries` times, or (at most once) lost.
    fn give_back(&self, g: &Locked<'_, L>, i: u32, w: u64, dead: bool, r: &mut Reclaimed) {
        if !self.cfg.acknowledged {
            if dead {
                self.free_slot(g, i, counter::LOST);
                r.lost += 1;
            } else {
                // An at-most-once consumer refusing an item: it goes back in line once more.
                self.requeue(g, i, deliveries_of(w));
                r.redelivered += 1;
            }
            return;
        }
        let d = deliveries_of(w);
        if d >= self.cfg.max_deliveries {
            self.free_slot(g, i, counter::DEAD_LETTERED);
            r.dead_lettered += 1;
        } else {
            self.requeue(g, i, d);
            r.redelivered += 1;
        }
    }

    fn requeue(&self, g: &Locked<'_, L>, i: u32, deliveries: u32) {
        // Commit point: ready again, keeping its sequence number and delivery count.
        self.commit_counted(i, word(slot::READY, 0, deliveries), counter::REDELIVERED);
        self.push_front(g, i);
    }

    /// `row` refuses its taken slot `i`: delivered again (or dead-lettered).
    pub(crate) fn refuse<N: Notifier>(
        &self,
        row: u32,
        i: u32,
        notifier: &N,
    ) -> Result<Reclaimed, QueueError> {
        let mut r = Reclaimed::default();
        {
            let g = self.locked(None)?;
            let w = self.owned(i, row, slot::TAKEN)?;
            self.give_back(&g, i, w, false, &mut r);
        }
        self.notify_not_empty(notifier);
        self.notify_not_full(notifier);
        Ok(r)
    }

    /// Frees everything dead row `r` held and marks the row free.
    ///
    /// The caller makes sure the row's participant is dead and cannot come back (it holds the
    /// row's lease).
    pub(crate) fn reclaim_row<N: Notifier>(
        &self,
        row: u32,
        notifier: &N,
    ) -> Result<Reclaimed, QueueError> {
        let mut r = Reclaimed::default();
        {
            let g = self.locked(None)?;
            for i in 0..self.cfg.capacity {
                let w = self.slot(i).word.load(Ordering::Relaxed);
                if row_of(w) != row {
                    continue;
                }
                match state_of(w) {
                    slot::RESERVED => {
                        self.free_slot(&g, i, counter::ABANDONED);
                        r.abandoned += 1;
                    }
                    slot::TAKEN => self.give_back(&g, i, w, true, &mut r),
                    _ => {}
                }
            }
            self.row(row).store(0, Ordering::Release);
        }
        self.notify_not_empty(notifier);
        self.notify_not_full(notifier);
        Ok(r)
    }

    /// Closes the queue: puts fail from now on, gets drain what is ready, then fail.
    pub(crate) fn close<N: Notifier>(&self, notifier: &N) -> Result<(), QueueError> {
        {
            let _g = self.locked(None)?;
            self.words().closed.store(1, Ordering::Relaxed);
        }
        self.notify_not_empty(notifier);
        self.notify_not_full(notifier);
        Ok(())
    }

    /// Whether the queue is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.words().closed.load(Ordering::Relaxed) != 0
    }

    /// Items ready now (a snapshot, without the lock; at most the capacity).
    pub(crate) fn len(&self) -> u32 {
        let w = self.words();
        let t = w.tail.load(Ordering::Relaxed);
        let h = w.head.load(Ordering::Relaxed);
        t.wrapping_sub(h).min(u64::from(self.cfg.capacity)) as u32
    }

    // -----------------------------------------------------------------------------------------
    // Waiting
    // -----------------------------------------------------------------------------------------

    fn notify_not_empty<N: Notifier>(&self, n: &N) {
        let w = self.words();
        // Release: a wait set that sees the word bumped checks the queue's length without the
        // lock, and must then see the item (see `crate::waitset`).
        w.not_empty.fetch_add(1, Ordering::Release);
        // Dekker with `wait_for`: change the word, fence, read the sleepers; the sleeper
        // counts itself in, fences, and sleeps only while the word is unchanged.
        fence(Ordering::SeqCst);
        if w.empty_sleepers.load(Ordering::Relaxed) > 0 {
            n.wake_all(&w.not_empty);
        }
    }

    fn notify_not_full<N: Notifier>(&self, n: &N) {
        let w = self.words();
        w.not_full.fetch_add(1, Ordering::Relaxed);
        // Dekker with `wait_for`: change the word, fence, read the sleepers; the sleeper
        // counts itself in, fences, and sleeps only while the word is unchanged.
        fence(Ordering::SeqCst);
        if w.full_sleepers.load(Ordering::Relaxed) > 0 {
            n.wake_all(&w.not_full);
        }
    }

    /// Retries `attempt` until it gives a value, sleeping on `word` between tries, until
    /// `deadline`; calls `idle` after every sleep (to check on peers).
    ///
    /// The waiter reads `word` before it tries, counts itself in, fences (`SeqCst`) and sleeps
    /// only while `word` still holds that value; whoever makes progress possible changes `word`
    /// *after* the change, fences, and then reads the sleeper count: one of the two sees the
    /// other, so a wake-up is never lost.
    fn wait_for<R, N: Notifier>(
        &self,
        word: &AtomicU32,
        sleepers: &AtomicU32,
        deadline: Deadline,
        notifier: &N,
        mut attempt: impl FnMut() -> Result<Option<R>, QueueError>,
        mut idle: impl FnMut(),
    ) -> Result<R, QueueError> {
        loop {
            let seen = word.load(Ordering::SeqCst);
            if let Some(r) = attempt()? {
                return Ok(r);
            }
            if deadline.expired() {
                return Err(QueueError::Timeout);
            }
            sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            notifier.wait(word, seen, sleep_for(&deadline));
            sleepers.fetch_sub(1, Ordering::Relaxed);
            idle();
        }
    }

    /// Reserves a slot, waiting for one until `deadline`.
    pub(crate) fn reserve<N: Notifier>(
        &self,
        row: u32,
        deadline: Deadline,
        notifier: &N,
        idle: impl FnMut(),
    ) -> Result<u32, QueueError> {
        let w = self.words();
        self.wait_for(
            &w.not_full,
            &w.full_sleepers,
            deadline,
            notifier,
            || self.try_reserve(row),
            idle,
        )
    }

    /// Takes an item, waiting for one until `deadline`.
    pub(crate) fn take<N: Notifier>(
        &self,
        row: u32,
        deadline: Deadline,
        notifier: &N,
        idle: impl FnMut(),
    ) -> Result<Taken, QueueError> {
        let w = self.words();
        self.wait_for(
            &w.not_empty,
            &w.empty_sleepers,
            deadline,
            notifier,
            || self.try_take(row),
            idle,
        )
    }
}

fn sleep_for(deadline: &Deadline) -> Option<Duration> {
    match (deadline.remaining(), CHECK_EVERY) {
        (None, c) => c,
        (Some(r), None) => Some(r),
        (Some(r), Some(c)) => Some(r.min(c)),
    }
}

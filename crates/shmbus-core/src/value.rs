//! Shared values and barriers, each in a named segment of its own: the untyped layer under
//! `shmbus::Value` and `shmbus::Barrier`.
//!
//! # Values (kind [`Kind::Value`])
//!
//! A value of 1, 2, 4 or 8 bytes is one atomic word at payload offset
//! [`DATA_OFFSET`](crate::wire::value::DATA_OFFSET) (64), read and written with atomic
//! instructions: nobody ever waits, and a process killed at any instruction leaves a whole
//! value. Any other size is kept **twice**, under the robust mutex at offset 0: a writer fills
//! the copy that is not current, then flips the `current` word (one store, the commit point),
//! so a writer killed half-way leaves the last complete value readable, and the next locker
//! needs no repair beyond clearing the owner-died mark.
//!
//! | offset | atomic value | locked value |
//! |---|---|---|
//! | 0 | (mutex, unused) | robust mutex |
//! | 64 | the value | `current` (`u32`: 0 or 1) |
//! | 128 | | copy 0 (`size` bytes, padded to 64) |
//! | 128 + padded size | | copy 1 |
//!
//! # Barriers (kind [`Kind::Barrier`])
//!
//! A barrier for `parties` processes: each handle holds a party row and its lease
//! (`wire::lease::barrier_party`). A wait, under the robust mutex, marks the row as arrived in
//! the current generation and counts the rows so marked; the last to arrive starts the next
//! generation and wakes everyone. The count is recomputed from the rows each time, so a holder
//! that dies inside leaves nothing to repair. A waiter checks every 50 ms for a party row whose
//! lease is free (its process died) that has not arrived: then the generation is **broken**,
//! every waiter of it returns [`BarrierError::PartyDied`], and the next generation starts
//! afresh (with a replacement party, it completes again).

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crate::fork::{Born, UsedAfterFork};
use crate::futex;
use crate::layout::{Codec, TypeInfo};
use crate::liveness::{self, Lease};
use crate::name::Name;
use crate::segment::{CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError};
use crate::sync::{Acquired, LockError, RobustMutex};
use crate::time::Deadline;
use crate::wire::{lease, value as wv};

const DATA: usize = wv::DATA_OFFSET;
const COPIES: usize = 128;

fn corrupt(segment: &Segment, reason: String) -> SegmentError {
    SegmentError::Corrupt {
        name: segment.name().clone(),
        reason,
    }
}

fn padded(size: usize) -> Option<usize> {
    size.max(1).checked_next_multiple_of(64)
}

/// Whether a value of `size` bytes is kept in one atomic word.
pub fn is_atomic_size(size: usize) -> bool {
    matches!(size, 1 | 2 | 4 | 8)
}

/// A named value of fixed size shared by every process that opens it (see the module docs).
///
/// # Examples
///
/// ```
/// use shmbus_core::layout::TypeInfo;
/// use shmbus_core::name::Name;
/// use shmbus_core::segment::Lifetime;
/// use shmbus_core::value::RawValue;
///
/// let name = Name::new(&format!("doc-rawvalue-{}", std::process::id())).unwrap();
/// let v = RawValue::open_or_create(&name, &TypeInfo::pod::<u64>(), &5u64.to_ne_bytes(), 0o600, Lifetime::Scoped)?;
/// assert_eq!(v.fetch_add(3).unwrap(), 5);
/// let mut out = [0u8; 8];
/// v.load(&mut out).unwrap();
/// assert_eq!(u64::from_ne_bytes(out), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawValue {
    segment: Segment,
    /// This handle\'s holder row for the segment\'s mutex.
    rows: crate::named::HolderRows,
    size: usize,
    atomic: bool,
}

impl fmt::Debug for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawValue")
            .field("name", self.segment.name())
            .field("size", &self.size)
            .field("atomic", &self.atomic)
            .finish()
    }
}

/// Why a locked value's operation failed.
pub type ValueError = LockError;

impl RawValue {
    /// Opens the value `name` of `type_info`, creating it holding `initial` (its bytes) if it
    /// does not exist.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open_or_create`]; [`SegmentError::InvalidSize`] if `initial` is not
    /// `type_info.size` bytes or that is zero.
    pub fn open_or_create(
        name: &Name,
        type_info: &TypeInfo,
        initial: &[u8],
        mode: u32,
        lifetime: Lifetime,
    ) -> Result<RawValue, SegmentError> {
        let size = initial.len();
        let invalid = |reason: String| SegmentError::InvalidSize {
            name: name.clone(),
            reason,
        };
        if size == 0 || size as u64 != type_info.size {
            return Err(invalid(format!("a value of {size} bytes for {type_info}")));
        }
        let atomic = is_atomic_size(size);
        let payload = if atomic {
            Some(DATA + 64)
        } else {
            padded(size).and_then(|p| p.checked_mul(2)?.checked_add(COPIES))
        }
        .ok_or_else(|| invalid(format!("a value of {size} bytes")))?;
        let mut opts = CreateOptions::new(Kind::Value, type_info.clone(), payload);
        opts.mode = mode;
        opts.lifetime = lifetime;
        opts.params[wv::ATOMIC] = u64::from(atomic);
        opts.params[wv::SIZE] = size as u64;
        let expect = Expect::new(Kind::Value, type_info.clone());
        let (segment, _) = Segment::open_or_create(name, &expect, &opts, |p| {
            // SAFETY: the zero-filled, page-aligned payload of a segment nobody else can see
            // yet; the mutex sits at offset 0 (`RobustMutex::SIZE <= 64`).
            unsafe { RobustMutex::init(p.as_mut_ptr().cast()) }
                .expect("initialising a process-shared robust mutex on fresh memory");
            let at = if atomic { DATA } else { COPIES };
            p[at..at + size].copy_from_slice(initial);
        })?;
        Self::attach(segment, size)
    }

    /// Opens the existing value `name` of `type_info`.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open`]; [`SegmentError::Corrupt`] if the payload cannot hold it.
    pub fn open(name: &Name, type_info: &TypeInfo) -> Result<RawValue, SegmentError> {
        let segment = Segment::open(name, &Expect::new(Kind::Value, type_info.clone()))?;
        let size = usize::try_from(type_info.size).unwrap_or(usize::MAX);
        Self::attach(segment, size)
    }

    fn attach(segment: Segment, size: usize) -> Result<RawValue, SegmentError> {
        let atomic = is_atomic_size(size);
        let p = &segment.snapshot().params;
        let need = if atomic {
            Some(DATA + 64)
        } else {
            padded(size).and_then(|p| p.checked_mul(2)?.checked_add(COPIES))
        };
        match need {
            Some(n)
                if n <= segment.payload_len()
                    && p[wv::SIZE] == size as u64
                    && p[wv::ATOMIC] == u64::from(atomic) =>
            {
                Ok(RawValue {
                    rows: crate::named::HolderRows::default(),
                    segment,
                    size,
                    atomic,
                })
            }
            _ => {
                let reason = format!(
                    "a payload of {} bytes with params {:?} cannot hold a value of {size} bytes",
                    segment.payload_len(),
                    &p[..2]
                );
                Err(corrupt(&segment, reason))
            }
        }
    }

    /// The value's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// The value's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the value is one atomic word (sizes 1, 2, 4, 8).
    pub fn is_atomic(&self) -> bool {
        self.atomic
    }

    fn at(&self, off: usize) -> NonNull<u8> {
        // SAFETY: every offset used is inside the payload (checked at attach).
        unsafe { self.segment.payload_ptr().add(off) }
    }

    fn mutex(&self) -> &RobustMutex {
        // SAFETY: the payload starts with the mutex the creator initialised, page-aligned,
        // mapped while `self` lives.
        unsafe { &*self.at(0).as_ptr().cast::<RobustMutex>() }
    }

    fn current(&self) -> &AtomicU32 {
        // SAFETY: offset 64 is inside the payload and 4-aligned; only accessed atomically.
        unsafe { &*self.at(DATA).as_ptr().cast::<AtomicU32>() }
    }

    fn copy_ptr(&self, which: u32) -> *mut u8 {
        let pad = padded(self.size).unwrap_or(0);
        self.at(COPIES + (which as usize & 1) * pad).as_ptr()
    }

    /// The atomic word as a `u64` (zero-extended).
    fn word_load(&self) -> u64 {
        let p = self.at(DATA).as_ptr();
        // SAFETY: (each arm) offset 64 is 64-aligned inside the payload; the value is only
        // ever accessed atomically, with the width its size fixes for every process.
        unsafe {
            match self.size {
                1 => u64::from((*p.cast::<AtomicU8>()).load(Ordering::Acquire)),
                2 => u64::from((*p.cast::<AtomicU16>()).load(Ordering::Acquire)),
                4 => u64::from((*p.cast::<AtomicU32>()).load(Ordering::Acquire)),
                _ => (*p.cast::<AtomicU64>()).load(Ordering::Acquire),
            }
        }
    }

    /// Compare-and-swap on the atomic word; `Err(actual)` on a mismatch.
    fn word_cas(&self, old: u64, new: u64) -> Result<u64, u64> {
        let p = self.at(DATA).as_ptr();
        let (s, f) = (Ordering::AcqRel, Ordering::Acquire);
        // SAFETY: as in `word_load`.
        unsafe {
            match self.size {
                1 => (*p.cast::<AtomicU8>())
                    .compare_exchange(old as u8, new as u8, s, f)
                    .map(u64::from)
                    .map_err(u64::from),
                2 => (*p.cast::<AtomicU16>())
                    .compare_exchange(old as u16, new as u16, s, f)
                    .map(u64::from)
                    .map_err(u64::from),
                4 => (*p.cast::<AtomicU32>())
                    .compare_exchange(old as u32, new as u32, s, f)
                    .map(u64::from)
                    .map_err(u64::from),
                _ => (*p.cast::<AtomicU64>()).compare_exchange(old, new, s, f),
            }
        }
    }

    /// Adds `delta` (wrapping, at the value's width) and returns the previous value; atomic
    /// values only (`None` otherwise).
    pub fn fetch_add(&self, delta: u64) -> Option<u64> {
        if !self.atomic {
            return None;
        }
        let mut cur = self.word_load();
        loop {
            match self.word_cas(cur, cur.wrapping_add(delta)) {
                Ok(prev) => return Some(prev),
                Err(actual) => cur = actual,
            }
        }
    }

    fn bytes_to_word(&self, bytes: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..self.size].copy_from_slice(&bytes[..self.size]);
        let v = u64::from_ne_bytes(w);
        // On a big-endian machine the value's bytes sit at the top of the word.
        if cfg!(target_endian = "big") {
            v >> (64 - 8 * self.size)
        } else {
            v
        }
    }

    fn word_to_bytes(&self, v: u64, out: &mut [u8]) {
        let v = if cfg!(target_endian = "big") {
            v << (64 - 8 * self.size)
        } else {
            v
        };
        out[..self.size].copy_from_slice(&v.to_ne_bytes()[..self.size]);
    }

    fn lock(&self) -> Result<(), LockError> {
        if self.mutex().lock(
            &self.rows.holders(&self.segment).map_err(LockError::Os)?,
            Some(Duration::from_secs(10)),
        )? == Acquired::OwnerDied
        {
            // The current copy is complete (a writer flips `current` only after filling the
            // other copy): nothing to repair.
            // SAFETY: we hold the mutex after OwnerDied, and the data is consistent.
            unsafe { self.mutex().make_consistent() }.map_err(LockError::Os)?;
        }
        Ok(())
    }

    fn unlock(&self) {
        if let Ok(h) = self.rows.holders(&self.segment) {
            // SAFETY: locked on this thread as this handle's row (cached since that lock, so
            // `holders` gives the same id and cannot fail here).
            unsafe { self.mutex().unlock(&h) }
        }
    }

    /// Copies the value into `out` (`size` bytes).
    ///
    /// # Errors
    ///
    /// For a locked value, the lock's ([`LockError::Timeout`] after 10 s, ...).
    pub fn load(&self, out: &mut [u8]) -> Result<(), ValueError> {
        let out = &mut out[..self.size];
        if self.atomic {
            let v = self.word_load();
            self.word_to_bytes(v, out);
            return Ok(());
        }
        self.lock()?;
        let cur = self.current().load(Ordering::Relaxed);
        // SAFETY: the copy lies inside the payload; we hold the mutex, so no writer of this
        // protocol touches it, and `out` is a private buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.copy_ptr(cur), out.as_mut_ptr(), self.size) };
        self.unlock();
        Ok(())
    }

    /// Replaces the value by `f(current)` (both `size` bytes) atomically with respect to every
    /// other operation; returns after the new value is in place. `f` may run more than once for
    /// an atomic value (a compare-and-swap loop).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn update(&self, mut f: impl FnMut(&[u8], &mut [u8])) -> Result<(), ValueError> {
        let mut old = vec![0u8; self.size];
        let mut new = vec![0u8; self.size];
        if self.atomic {
            let mut cur = self.word_load();
            loop {
                self.word_to_bytes(cur, &mut old);
                new.copy_from_slice(&old);
                f(&old, &mut new);
                match self.word_cas(cur, self.bytes_to_word(&new)) {
                    Ok(_) => return Ok(()),
                    Err(actual) => cur = actual,
                }
            }
        }
        self.lock()?;
        let cur = self.current().load(Ordering::Relaxed) & 1;
        // SAFETY: both copies lie inside the payload and we hold the mutex: no writer of this
        // protocol touches them; `old`/`new` are private buffers.
        unsafe { std::ptr::copy_nonoverlapping(self.copy_ptr(cur), old.as_mut_ptr(), self.size) };
        new.copy_from_slice(&old);
        f(&old, &mut new);
        // SAFETY: as above; the copy that is not current is nobody's to read.
        unsafe { std::ptr::copy_nonoverlapping(new.as_ptr(), self.copy_ptr(cur ^ 1), self.size) };
        // Commit point.
        self.current().store(cur ^ 1, Ordering::Relaxed);
        self.unlock();
        Ok(())
    }

    /// Replaces the value by `bytes`.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn store(&self, bytes: &[u8]) -> Result<(), ValueError> {
        self.update(|_, new| new.copy_from_slice(&bytes[..new.len()]))
    }
}

// ---------------------------------------------------------------------------------------------
// Barrier
// ---------------------------------------------------------------------------------------------

/// The type a barrier segment records.
pub fn barrier_type() -> TypeInfo {
    TypeInfo::new("barrier", 0, 4, Codec::Bytes).expect("a short name")
}

/// Barrier words at payload offset 64, then `parties` rows of two words (pid, arrived
/// generation + 1).
#[repr(C)]
struct BarrierWords {
    generation: AtomicU32,
    /// Generation + 1 of the last generation broken by a dead party (0: none).
    broken: AtomicU32,
    sleepers: AtomicU32,
    _pad: u32,
}

const ROWS: usize = 128;
/// Most parties a barrier can have.
pub const MAX_PARTIES: u32 = 1024;
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Why a barrier wait did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// The timeout passed before every party arrived (this party's arrival is withdrawn).
    #[error("timed out waiting for the other parties")]
    Timeout,
    /// A party died before it arrived: this generation will never complete. The next
    /// generation starts afresh (a replacement party can join the dead one's row).
    #[error("a party of the barrier died before it arrived")]
    PartyDied,
    /// The barrier's lock failed.
    #[error("the barrier lock failed: {0}")]
    Lock(#[from] LockError),
    /// The handle was made before a fork and this process is the child.
    #[error(transparent)]
    UsedAfterFork(#[from] UsedAfterFork),
}

/// Why a barrier could not be opened or joined.
#[derive(Debug, thiserror::Error)]
pub enum BarrierOpenError {
    /// The segment could not be opened or created.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Every party row is held by a live party.
    #[error("barrier {name:?} already has its {parties} parties")]
    Full {
        /// The barrier.
        name: Name,
        /// Its parties.
        parties: u32,
    },
    /// An operating-system call failed.
    #[error("taking a barrier party lease failed: {0}")]
    Os(#[source] std::io::Error),
}

/// A party of a named barrier for a fixed number of processes (see the module docs).
///
/// # Examples
///
/// ```
/// use shmbus_core::name::Name;
/// use shmbus_core::segment::Lifetime;
/// use shmbus_core::value::RawBarrier;
/// use std::time::Duration;
///
/// let name = Name::new(&format!("doc-rawbarrier-{}", std::process::id())).unwrap();
/// let a = RawBarrier::open_or_create(&name, 2, 0o600, Lifetime::Scoped)?;
/// let b = RawBarrier::open_or_create(&name, 2, 0o600, Lifetime::Scoped)?;
/// std::thread::scope(|s| {
///     let t = s.spawn(|| b.wait(Some(Duration::from_secs(5))).unwrap());
///     let mine = a.wait(Some(Duration::from_secs(5))).unwrap();
///     assert_ne!(mine, t.join().unwrap(), "exactly one party is the leader");
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawBarrier {
    segment: Segment,
    /// This handle\'s holder row for the segment\'s mutex.
    rows: crate::named::HolderRows,
    parties: u32,
    row: u32,
    born: Born,
    _lease: Lease,
}

impl fmt::Debug for RawBarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawBarrier")
            .field("name", self.segment.name())
            .field("parties", &self.parties)
            .field("row", &self.row)
            .finish()
    }
}

impl RawBarrier {
    /// Opens the barrier `name` for `parties` processes (creating it if needed) and joins it.
    ///
    /// # Errors
    ///
    /// Those of opening the segment ([`SegmentError::InvalidSize`] for 0 or more than
    /// [`MAX_PARTIES`] parties, or an existing barrier for another number);
    /// [`BarrierOpenError::Full`] when every party row is held.
    pub fn open_or_create(
        name: &Name,
        parties: u32,
        mode: u32,
        lifetime: Lifetime,
    ) -> Result<RawBarrier, BarrierOpenError> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(SegmentError::InvalidSize {
                name: name.clone(),
                reason: format!("{parties} parties (1 to {MAX_PARTIES})"),
            }
            .into());
        }
        let mut opts =
            CreateOptions::new(Kind::Barrier, barrier_type(), ROWS + parties as usize * 8);
        opts.mode = mode;
        opts.lifetime = lifetime;
        opts.params[wv::PARTIES] = u64::from(parties);
        let expect = Expect::new(Kind::Barrier, barrier_type());
        let (segment, _) = Segment::open_or_create(name, &expect, &opts, |p| {
            // SAFETY: fresh, zero-filled, page-aligned payload nobody else sees yet.
            unsafe { RobustMutex::init(p.as_mut_ptr().cast()) }
                .expect("initialising a process-shared robust mutex on fresh memory");
        })?;
        let found = segment.snapshot().params[wv::PARTIES];
        if found != u64::from(parties) || segment.payload_len() < ROWS + parties as usize * 8 {
            return Err(SegmentError::InvalidSize {
                name: name.clone(),
                reason: format!("asked for {parties} parties; the barrier has {found}"),
            }
            .into());
        }
        let fd = segment.fd();
        for r in 0..parties {
            let Some(lease) =
                Lease::try_acquire(fd, lease::barrier_party(r)).map_err(BarrierOpenError::Os)?
            else {
                continue;
            };
            let b = RawBarrier {
                rows: crate::named::HolderRows::default(),
                segment,
                parties,
                row: r,
                born: Born::now(),
                _lease: lease,
            };
            b.join_row();
            return Ok(b);
        }
        Err(BarrierOpenError::Full {
            name: name.clone(),
            parties,
        })
    }

    fn join_row(&self) {
        // A dead predecessor's arrival does not count for us.
        self.row_arrived(self.row).store(0, Ordering::Relaxed);
        self.row_pid(self.row)
            .store(std::process::id().max(1), Ordering::Release);
    }

    /// The barrier's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// Parties per generation.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// The current generation (how many times the barrier has released or broken).
    pub fn generation(&self) -> u32 {
        self.words().generation.load(Ordering::Acquire)
    }

    /// Parties that have arrived in the current generation (a snapshot, without the lock).
    pub fn arrived(&self) -> u32 {
        let g = self.generation().wrapping_add(1);
        (0..self.parties)
            .filter(|&r| self.row_arrived(r).load(Ordering::Relaxed) == g)
            .count() as u32
    }

    fn words(&self) -> &BarrierWords {
        // SAFETY: payload offset 64 holds the words (16 bytes, 4-aligned), mapped while `self`
        // lives; only accessed atomically.
        unsafe {
            &*self
                .segment
                .payload_ptr()
                .as_ptr()
                .add(64)
                .cast::<BarrierWords>()
        }
    }

    fn row_word(&self, r: u32, k: usize) -> &AtomicU32 {
        assert!(r < self.parties && k < 2);
        // SAFETY: rows start at ROWS, 8 bytes each, `parties` of them inside the payload
        // (checked at open); only accessed atomically.
        unsafe {
            &*self
                .segment
                .payload_ptr()
                .as_ptr()
                .add(ROWS + r as usize * 8 + k * 4)
                .cast::<AtomicU32>()
        }
    }

    fn row_pid(&self, r: u32) -> &AtomicU32 {
        self.row_word(r, 0)
    }

    fn row_arrived(&self, r: u32) -> &AtomicU32 {
        self.row_word(r, 1)
    }

    fn mutex(&self) -> &RobustMutex {
        // SAFETY: the payload starts with the mutex the creator initialised.
        unsafe { &*self.segment.payload_ptr().as_ptr().cast::<RobustMutex>() }
    }

    fn locked<R>(&self, f: impl FnOnce() -> R) -> Result<R, BarrierError> {
        if self.mutex().lock(
            &self.rows.holders(&self.segment).map_err(LockError::Os)?,
            Some(Duration::from_secs(10)),
        )? == Acquired::OwnerDied
        {
            // Nothing to repair: every decision is recomputed from the rows.
            // SAFETY: we hold the mutex after OwnerDied; the data is consistent.
            unsafe { self.mutex().make_consistent() }.map_err(LockError::Os)?;
        }
        let r = f();
        if let Ok(h) = self.rows.holders(&self.segment) {
            // SAFETY: locked on this thread as this handle's row (cached since that lock, so
            // `holders` gives the same id and cannot fail here).
            unsafe { self.mutex().unlock(&h) }
        };
        Ok(r)
    }

    fn wake(&self) {
        let w = self.words();
        std::sync::atomic::fence(Ordering::SeqCst);
        if w.sleepers.load(Ordering::Relaxed) > 0 {
            futex::wake(&w.generation, u32::MAX);
        }
    }

    /// Under the lock: the next generation starts.
    fn advance(&self, g: u32, broken: bool) {
        let w = self.words();
        if broken {
            w.broken.store(g.wrapping_add(1), Ordering::Relaxed);
        }
        w.generation.store(g.wrapping_add(1), Ordering::Release);
    }

    /// A dead party of generation `g` that has not arrived: its row, if any.
    fn dead_party(&self, g: u32) -> Option<u32> {
        let fd = self.segment.fd();
        (0..self.parties).find(|&r| {
            r != self.row
                && self.row_pid(r).load(Ordering::Acquire) != 0
                && self.row_arrived(r).load(Ordering::Relaxed) != g.wrapping_add(1)
                && !liveness::is_held(fd, lease::barrier_party(r)).unwrap_or(true)
        })
    }

    /// Arrives and waits for the other parties, at most `timeout`. `Ok(true)` for exactly one
    /// party of each generation (the last to arrive, the "leader").
    ///
    /// # Errors
    ///
    /// [`BarrierError::Timeout`] (the arrival is withdrawn), [`BarrierError::PartyDied`],
    /// [`BarrierError::Lock`], [`BarrierError::UsedAfterFork`].
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, BarrierError> {
        self.born.check()?;
        let deadline = Deadline::after(timeout);
        let w = self.words();
        let (g, leader) = self.locked(|| {
            let g = w.generation.load(Ordering::Relaxed);
            self.row_arrived(self.row)
                .store(g.wrapping_add(1), Ordering::Relaxed);
            let arrived = (0..self.parties)
                .filter(|&r| self.row_arrived(r).load(Ordering::Relaxed) == g.wrapping_add(1))
                .count() as u32;
            let leader = arrived >= self.parties;
            if leader {
                self.advance(g, false);
            }
            (g, leader)
        })?;
        if leader {
            self.wake();
            return Ok(true);
        }
        loop {
            w.sleepers.fetch_add(1, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            let step = deadline
                .remaining()
                .map_or(CHECK_EVERY, |r| r.min(CHECK_EVERY));
            futex::wait(&w.generation, g, Some(step));
            w.sleepers.fetch_sub(1, Ordering::Relaxed);
            if w.generation.load(Ordering::Acquire) != g {
                let broken = w.broken.load(Ordering::Relaxed) == g.wrapping_add(1);
                return if broken {
                    Err(BarrierError::PartyDied)
                } else {
                    Ok(false)
                };
            }
            if let Some(dead) = self.dead_party(g) {
                let fd = self.segment.fd();
                if let Ok(Some(_lease)) = Lease::try_acquire(fd, lease::barrier_party(dead)) {
                    let broke = self.locked(|| {
                        if w.generation.load(Ordering::Relaxed) != g {
                            return false;
                        }
                        self.row_pid(dead).store(0, Ordering::Release);
                        self.row_arrived(dead).store(0, Ordering::Relaxed);
                        self.advance(g, true);
                        true
                    })?;
                    if broke {
                        tracing::info!(barrier = %self.name(), party = dead, "a party died: generation broken");
                        self.wake();
                    }
                }
                continue;
            }
            if deadline.expired() {
                let withdrawn = self.locked(|| {
                    if w.generation.load(Ordering::Relaxed) == g {
                        self.row_arrived(self.row).store(0, Ordering::Relaxed);
                        true
                    } else {
                        false
                    }
                })?;
                if withdrawn {
                    return Err(BarrierError::Timeout);
                }
            }
        }
    }
}

impl Drop for RawBarrier {
    fn drop(&mut self) {
        if self.born.is_current() {
            let _ = self.locked(|| {
                self.row_arrived(self.row).store(0, Ordering::Relaxed);
                self.row_pid(self.row).store(0, Ordering::Release);
            });
        }
    }
}

//! Named process-shared primitives, each in a segment of its own: the safe, untyped layer under
//! `shmbus::Mutex`, `shmbus::Semaphore` and `shmbus::Event`.
//!
//! | type | segment kind | payload |
//! |---|---|---|
//! | [`RawMutex`] | [`Kind::Mutex`] | a [`RobustMutex`] at offset 0 (padded to [`MUTEX_VALUE_OFFSET`] = 64 bytes), then the guarded value's bytes |
//! | [`RawSemaphore`] = [`Named`]`<`[`Semaphore`]`>` | [`Kind::Semaphore`] | a [`Semaphore`] at offset 0 |
//! | [`RawEvent`] = [`Named`]`<`[`Event`]`>` | [`Kind::Event`] | an [`Event`] at offset 0 |
//!
//! A semaphore or an event is its whole payload, so one generic handle, [`Named`], serves both:
//! it dereferences to the primitive, whose own methods act on the shared value.
//!
//! Any process opens them by [`Name`]. The creator initialises the primitive in place before the
//! segment gets its name (see [`Segment::create`]), so an opener never sees a half-built one.
//! Sizes are read from the header once, at open, checked against what the primitive needs, and
//! never read again.
//!
//! The semaphore and event segments record a fixed type description
//! ([`semaphore_type`], [`event_type`]); the event's names its mode, so that opening an
//! auto-reset event as a manual-reset one (or the reverse) is a [`SegmentError::WrongType`]
//! naming both.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use crate::fork::Born;
use crate::layout::{Codec, TypeInfo};
use crate::liveness::{self, Lease};
use crate::name::Name;
use crate::segment::{
    CreateOptions, Expect, Kind, Lifetime, Segment, SegmentError, DEFAULT_OPEN_TIMEOUT,
};
use crate::sync::{
    Acquired, Event, EventMode, Holders, LockError, RobustMutex, Semaphore, TryLockError,
};
use crate::wire::lease;

/// Payload offset of a [`RawMutex`]'s value: the [`RobustMutex`] before it is padded to 64 bytes,
/// so the value is 64-byte aligned (the payload is page-aligned).
pub const MUTEX_VALUE_OFFSET: usize = 64;

const _: () = assert!(RobustMutex::SIZE <= MUTEX_VALUE_OFFSET);
const _: () = assert!(MUTEX_VALUE_OFFSET % RobustMutex::ALIGN == 0);

/// The type description a [`RawSemaphore`]'s segment records: `"semaphore"`, 8 bytes, align 4.
pub fn semaphore_type() -> TypeInfo {
    TypeInfo::new("semaphore", Semaphore::SIZE as u64, 4, Codec::Bytes).expect("a short name")
}

/// The type description a [`RawEvent`]'s segment records: `"event/auto"` or `"event/manual"`,
/// 12 bytes, align 4.
pub fn event_type(mode: EventMode) -> TypeInfo {
    let name = match mode {
        EventMode::AutoReset => "event/auto",
        EventMode::ManualReset => "event/manual",
    };
    TypeInfo::new(name, Event::SIZE as u64, 4, Codec::Bytes).expect("a short name")
}

fn create_options(
    kind: Kind,
    type_info: TypeInfo,
    payload_size: usize,
    mode: u32,
    lifetime: Lifetime,
) -> CreateOptions {
    let mut opts = CreateOptions::new(kind, type_info, payload_size);
    opts.mode = mode;
    opts.lifetime = lifetime;
    opts
}

fn corrupt(segment: &Segment, reason: String) -> SegmentError {
    SegmentError::Corrupt {
        name: segment.name().clone(),
        reason,
    }
}

// ---------------------------------------------------------------------------------------------
// Mutex
// ---------------------------------------------------------------------------------------------

/// A named robust mutex guarding a value of fixed size, shared by every process that opens it.
///
/// The value is plain bytes to this layer (the `shmbus` crate types it). It is 64-byte aligned
/// and [`value_len`](Self::value_len) bytes long: at least the size of the type it was opened
/// with. Only the holder of the mutex touches it, through a [`RawGuard`].
///
/// # A dead holder
///
/// If the holder dies (its process is killed, or its thread ends while holding the mutex), the
/// next [`lock`](Self::lock) succeeds with [`RawGuard::owner_died`] set. That locker must repair
/// the value and call [`RawGuard::make_consistent`] before dropping the guard; dropping it
/// without makes the mutex permanently [not recoverable](LockError::NotRecoverable) for every
/// process.
///
/// # A leaked guard
///
/// A thread that holds the mutex has it on its robust list, by address, in this mapping. If a
/// guard is leaked (`std::mem::forget`) and its thread still exists when the handle is dropped,
/// the handle leaves the segment mapped (and in use) until the process ends, rather than let the
/// kernel or glibc write into memory that may since have been reused.
///
/// # Examples
///
/// ```
/// use shmbus_core::layout::TypeInfo;
/// use shmbus_core::name::Name;
/// use shmbus_core::named::RawMutex;
/// use shmbus_core::segment::{Lifetime, SegmentError};
///
/// let name = Name::new(&format!("doc-rawmutex-{}", std::process::id())).unwrap();
/// let ty = TypeInfo::pod::<u64>();
/// let init = |v: &mut [u8]| v[..8].copy_from_slice(&7u64.to_ne_bytes());
/// let m = RawMutex::open_or_create(&name, &ty, 8, init, 0o600, Lifetime::Scoped)?;
/// let other = RawMutex::open(&name, &ty)?; // as another process would
/// {
///     let mut g = other.lock(None).unwrap();
///     assert!(!g.owner_died());
///     assert_eq!(g.bytes()[..8], 7u64.to_ne_bytes());
///     g.bytes_mut()[..8].copy_from_slice(&8u64.to_ne_bytes());
/// } // unlocked here
/// assert_eq!(m.try_lock().unwrap().bytes()[..8], 8u64.to_ne_bytes());
/// # Ok::<(), SegmentError>(())
/// ```
pub struct RawMutex {
    segment: Segment,
    /// Bytes of the value, from the payload length read once at open.
    value_len: usize,
    created: bool,
    /// This handle's holder row.
    rows: HolderRows,
}

/// A handle's holder row for a [`RobustMutex`] in a segment: the id the lock word records,
/// alive while its lease (`wire::lease::MUTEX_HOLDER + id - 1`) is held. Taken on first use,
/// and again in a forked child, whose copy of the parent's lease is not held.
#[derive(Debug, Default)]
pub(crate) struct HolderRows {
    row: std::sync::Mutex<Option<Row>>,
}

#[derive(Debug)]
struct Row {
    id: u32,
    born: Born,
    _lease: Lease,
}

impl HolderRows {
    /// This handle's holders view of `segment`'s mutex.
    pub(crate) fn holders<'a>(&self, segment: &'a Segment) -> Result<MutexHolders<'a>, io::Error> {
        let mut row = self.row.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = row.as_ref().filter(|r| r.born.is_current()) {
            return Ok(MutexHolders { segment, me: r.id });
        }
        // Start at a different row in each process, so that handles rarely probe each other's.
        let start = std::process::id() % lease::MUTEX_ROWS;
        for i in 0..lease::MUTEX_ROWS {
            let r = (start + i) % lease::MUTEX_ROWS;
            let byte = lease::MUTEX_HOLDER + u64::from(r);
            if let Some(l) = Lease::try_acquire(segment.fd(), byte)? {
                let id = r + 1;
                *row = Some(Row {
                    id,
                    born: Born::now(),
                    _lease: l,
                });
                return Ok(MutexHolders { segment, me: id });
            }
        }
        Err(io::Error::other(format!(
            "all {} holder rows of the mutex are taken",
            lease::MUTEX_ROWS
        )))
    }
}

/// The holders of a segment's mutex, as seen by one handle (`me`).
pub(crate) struct MutexHolders<'a> {
    segment: &'a Segment,
    me: u32,
}

impl Holders for MutexHolders<'_> {
    fn me(&self) -> u32 {
        self.me
    }

    fn is_alive(&self, id: u32) -> bool {
        // Ids outside the rows are another process's writes: nobody holds them.
        if id == 0 || id > lease::MUTEX_ROWS {
            return false;
        }
        liveness::is_held(self.segment.fd(), lease::MUTEX_HOLDER + u64::from(id - 1))
            .unwrap_or(true)
    }
}

impl fmt::Debug for RawMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMutex")
            .field("name", self.segment.name())
            .field("value_len", &self.value_len)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl RawMutex {
    /// Opens the mutex `name` guarding a `type_info`, creating it if it does not exist.
    ///
    /// When creating, the value is `value_size` bytes (at least `type_info.size`), which `init`
    /// receives zero-filled to write the initial value; the mutex starts unlocked; the file gets
    /// permission bits `mode` and lives as long as `lifetime` says.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open_or_create`] (a wrong kind or type among them), and
    /// [`SegmentError::InvalidSize`] if `value_size` is below `type_info.size`,
    /// [`SegmentError::Corrupt`] if an existing segment's payload cannot hold the mutex and value.
    pub fn open_or_create(
        name: &Name,
        type_info: &TypeInfo,
        value_size: usize,
        init: impl Fn(&mut [u8]),
        mode: u32,
        lifetime: Lifetime,
    ) -> Result<RawMutex, SegmentError> {
        let invalid = |reason: String| SegmentError::InvalidSize {
            name: name.clone(),
            reason,
        };
        if (value_size as u64) < type_info.size {
            return Err(invalid(format!(
                "a value of {value_size} bytes cannot hold {type_info}"
            )));
        }
        let payload = MUTEX_VALUE_OFFSET
            .checked_add(value_size)
            .ok_or_else(|| invalid(format!("a value of {value_size} bytes")))?;
        let mut opts = create_options(Kind::Mutex, type_info.clone(), payload, mode, lifetime);
        opts.params[0] = value_size as u64;
        opts.params[1] = MUTEX_VALUE_OFFSET as u64;
        let expect = Expect::new(Kind::Mutex, type_info.clone());
        let (segment, created) = Segment::open_or_create(name, &expect, &opts, |p| {
            let (mutex, value) = p.split_at_mut(MUTEX_VALUE_OFFSET);
            // SAFETY: `mutex` is the first 64 bytes of the zero-filled, page-aligned payload of a
            // segment no other process can see yet: valid, aligned for `pthread_mutex_t`, at
            // least `RobustMutex::SIZE` bytes, and unused. It is initialised once, here, and
            // never moved (it lives in the file).
            unsafe { RobustMutex::init(mutex.as_mut_ptr().cast()) }
                .expect("initialising a process-shared robust mutex on fresh memory");
            init(value);
        })?;
        Self::attach(segment, type_info, created)
    }

    /// Opens the existing mutex `name` guarding a `type_info`.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open`], and [`SegmentError::Corrupt`] if the payload cannot hold the
    /// mutex and a `type_info`.
    pub fn open(name: &Name, type_info: &TypeInfo) -> Result<RawMutex, SegmentError> {
        let segment = Segment::open(name, &Expect::new(Kind::Mutex, type_info.clone()))?;
        Self::attach(segment, type_info, false)
    }

    fn attach(
        segment: Segment,
        type_info: &TypeInfo,
        created: bool,
    ) -> Result<RawMutex, SegmentError> {
        // Read once: the header is in memory other processes can write.
        let len = segment.payload_len();
        let need = usize::try_from(type_info.size)
            .ok()
            .and_then(|s| s.checked_add(MUTEX_VALUE_OFFSET));
        let value_len = match need {
            Some(need) if len >= need => len - MUTEX_VALUE_OFFSET,
            _ => {
                let reason = format!(
                    "a payload of {len} bytes cannot hold a mutex ({MUTEX_VALUE_OFFSET} bytes) and a {type_info}"
                );
                return Err(corrupt(&segment, reason));
            }
        };
        Ok(RawMutex {
            segment,
            value_len,
            created,
            rows: HolderRows::default(),
        })
    }

    fn holders(&self) -> Result<MutexHolders<'_>, io::Error> {
        self.rows.holders(&self.segment)
    }

    /// The mutex's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// Whether this handle created the segment (rather than opening an existing one).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Bytes of the guarded value ([`RawGuard::bytes`] is this long).
    pub fn value_len(&self) -> usize {
        self.value_len
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    fn mutex(&self) -> &RobustMutex {
        // SAFETY: the payload is at least MUTEX_VALUE_OFFSET >= RobustMutex::SIZE bytes (checked
        // at attach), page-aligned, and starts with the `RobustMutex` the creator initialised
        // before naming the segment (kind and type were checked at open). It stays mapped as
        // long as `self`, which the reference borrows; a `RobustMutex` is shared by design.
        unsafe { &*self.segment.payload_ptr().as_ptr().cast::<RobustMutex>() }
    }

    fn guard(&self, me: u32, acquired: Acquired) -> RawGuard<'_> {
        RawGuard {
            mutex: self,
            me,
            owner_died: acquired == Acquired::OwnerDied,
            _not_send: PhantomData,
        }
    }

    /// Locks the mutex, waiting at most `timeout` (`None`: no limit; a dead holder never makes
    /// this hang, as the mutex is robust).
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`], [`LockError::NotRecoverable`] (a previous locker after a dead
    /// holder dropped its guard without [`RawGuard::make_consistent`]), [`LockError::Deadlock`]
    /// (this thread holds it already), [`LockError::Os`].
    pub fn lock(&self, timeout: Option<Duration>) -> Result<RawGuard<'_>, LockError> {
        let h = self.holders().map_err(LockError::Os)?;
        let acquired = self.mutex().lock(&h, timeout)?;
        Ok(self.guard(h.me, acquired))
    }

    /// Locks the mutex if no thread holds it, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if a thread (this one included) holds it,
    /// [`TryLockError::NotRecoverable`], [`TryLockError::Os`].
    pub fn try_lock(&self) -> Result<RawGuard<'_>, TryLockError> {
        let h = self.holders().map_err(TryLockError::Os)?;
        let acquired = self.mutex().try_lock(&h)?;
        Ok(self.guard(h.me, acquired))
    }
}

impl RawMutex {
    /// Locks the mutex without a guard, for bindings whose lock and unlock are separate calls
    /// (Python's `acquire`/`release`): as [`lock`](Self::lock), reporting what it found.
    ///
    /// The caller then holds the mutex until [`unlock_raw`](Self::unlock_raw) on this handle.
    /// After [`Acquired::OwnerDied`] it must repair the value and call
    /// [`make_consistent_raw`](Self::make_consistent_raw) before unlocking, or the mutex becomes
    /// not recoverable. Dropping the handle while holding it leaves it held until the process
    /// ends (the next locker then sees the owner dead, as after a crash).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus_core::layout::TypeInfo;
    /// use shmbus_core::name::Name;
    /// use shmbus_core::named::RawMutex;
    /// use shmbus_core::segment::{Lifetime, SegmentError};
    /// use shmbus_core::sync::{Acquired, LockError};
    ///
    /// let name = Name::new(&format!("doc-rawmutex-raw-{}", std::process::id())).unwrap();
    /// let m = RawMutex::open_or_create(&name, &TypeInfo::pod::<u64>(), 8, |_| {}, 0o600, Lifetime::Scoped)?;
    /// assert_eq!(m.lock_raw(None).unwrap(), Acquired::Clean);
    /// assert!(matches!(m.lock_raw(None), Err(LockError::Deadlock)));
    /// // SAFETY: this thread locked it through `m` just above and has not unlocked it.
    /// unsafe { m.unlock_raw() };
    /// assert!(m.try_lock().is_ok());
    /// # Ok::<(), SegmentError>(())
    /// ```
    pub fn lock_raw(&self, timeout: Option<Duration>) -> Result<Acquired, LockError> {
        let h = self.holders().map_err(LockError::Os)?;
        self.mutex().lock(&h, timeout)
    }

    /// Locks the mutex without a guard if no thread holds it: as [`try_lock`](Self::try_lock),
    /// with the contract of [`lock_raw`](Self::lock_raw).
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Self::try_lock).
    pub fn try_lock_raw(&self) -> Result<Acquired, TryLockError> {
        let h = self.holders().map_err(TryLockError::Os)?;
        self.mutex().try_lock(&h)
    }

    /// Marks the value repaired after a [`lock_raw`](Self::lock_raw) that returned
    /// [`Acquired::OwnerDied`]. Does nothing if the mutex is not in that state.
    ///
    /// # Safety
    ///
    /// The calling thread holds the mutex through this handle (a successful `lock_raw` or
    /// `try_lock_raw` in this process, not unlocked since).
    pub unsafe fn make_consistent_raw(&self) {
        // SAFETY: the caller holds the mutex (this function's contract); it fails only if the
        // mutex is not in the owner-died state, which is the documented no-op.
        let _ = unsafe { self.mutex().make_consistent() };
    }

    /// Unlocks a mutex locked with [`lock_raw`](Self::lock_raw) or
    /// [`try_lock_raw`](Self::try_lock_raw). If it was acquired with [`Acquired::OwnerDied`]
    /// and not made consistent, it becomes not recoverable.
    ///
    /// # Safety
    ///
    /// The calling thread holds the mutex through this handle (a successful `lock_raw` or
    /// `try_lock_raw` on this thread, in this process, not unlocked since), and no
    /// [`RawGuard`] of it exists.
    pub unsafe fn unlock_raw(&self) {
        // A failure here means no row could be had, so this handle cannot hold the mutex.
        let Ok(h) = self.holders() else { return };
        // SAFETY: the caller holds the mutex as this handle's row (`holders` returns the same
        // row in the process that locked), on this thread (this function's contract).
        unsafe { self.mutex().unlock(&h) };
    }
}

/// A locked [`RawMutex`]: access to the value's bytes. Dropping it unlocks the mutex.
///
/// It is not `Send`: a pthread mutex must be unlocked by the thread that locked it.
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<shmbus_core::named::RawGuard<'static>>();
/// ```
///
/// # Examples
///
/// ```
/// use shmbus_core::layout::TypeInfo;
/// use shmbus_core::name::Name;
/// use shmbus_core::named::RawMutex;
/// use shmbus_core::segment::{Lifetime, SegmentError};
///
/// let name = Name::new(&format!("doc-rawguard-{}", std::process::id())).unwrap();
/// let m = RawMutex::open_or_create(&name, &TypeInfo::pod::<u32>(), 4, |_| {}, 0o600, Lifetime::Scoped)?;
/// // A holder thread that ends without unlocking, as a killed process would.
/// std::thread::scope(|s| {
///     s.spawn(|| std::mem::forget(m.lock(None).unwrap()));
/// });
/// let mut g = m.lock(None).unwrap();
/// assert!(g.owner_died());
/// g.bytes_mut().fill(0); // repair the value...
/// g.make_consistent();   // ...then say so, before unlocking
/// drop(g);
/// assert!(!m.lock(None).unwrap().owner_died());
/// # Ok::<(), SegmentError>(())
/// ```
pub struct RawGuard<'a> {
    mutex: &'a RawMutex,
    /// The holder id it was locked as.
    me: u32,
    owner_died: bool,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for RawGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawGuard")
            .field("name", self.mutex.name())
            .field("owner_died", &self.owner_died)
            .finish_non_exhaustive()
    }
}

impl RawGuard<'_> {
    /// The guarded value's bytes ([`RawMutex::value_len`] of them, 64-byte aligned).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the bytes [MUTEX_VALUE_OFFSET, MUTEX_VALUE_OFFSET + value_len) lie inside the
        // payload (checked at attach against the payload length read once) and stay mapped while
        // the mutex handle lives, which this guard borrows. This guard holds the mutex, so by
        // the protocol every other thread of every process keeps away from the value until it
        // is unlocked, which happens only when the guard, and so this borrow, is gone. No
        // `&mut` to them exists while this `&self` borrow lives: only `bytes_mut(&mut self)`
        // makes one, and there is one guard per holding.
        unsafe {
            std::slice::from_raw_parts(
                self.mutex
                    .segment
                    .payload_ptr()
                    .as_ptr()
                    .add(MUTEX_VALUE_OFFSET),
                self.mutex.value_len,
            )
        }
    }

    /// The guarded value's bytes, to change.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the `&mut self` borrow makes this the only reference to them in
        // this process (the mutex excludes other threads, and relocking on this thread fails
        // rather than making a second guard).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.mutex
                    .segment
                    .payload_ptr()
                    .as_ptr()
                    .add(MUTEX_VALUE_OFFSET),
                self.mutex.value_len,
            )
        }
    }

    /// Whether the previous holder died holding the mutex (`EOWNERDEAD`): the value may be
    /// half-updated. Repair it and call [`make_consistent`](Self::make_consistent) before this
    /// guard is dropped, or the mutex becomes permanently not recoverable for everyone.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// Marks the value repaired after [`owner_died`](Self::owner_died), so that dropping the
    /// guard leaves a normal, usable mutex. Does nothing otherwise.
    pub fn make_consistent(&mut self) {
        if !self.owner_died {
            return;
        }
        // SAFETY: this guard holds the mutex (made by a successful lock on this thread, which
        // reported the owner's death) and the caller has repaired the value. It fails only if
        // another process rewrote the state meanwhile: nothing to do about that here.
        let _ = unsafe { self.mutex.mutex().make_consistent() };
        self.owner_died = false;
    }
}

impl Drop for RawGuard<'_> {
    fn drop(&mut self) {
        let h = MutexHolders {
            segment: &self.mutex.segment,
            me: self.me,
        };
        // SAFETY: this guard was made by a successful lock as `me`, on this thread (it is not
        // `Send`), and the mutex has not been unlocked since.
        unsafe { self.mutex.mutex().unlock(&h) };
    }
}

// ---------------------------------------------------------------------------------------------
// Primitives that are the whole payload: one generic handle
// ---------------------------------------------------------------------------------------------

/// A primitive that is the whole payload of a segment of its own kind, shared by every process
/// that opens it by name ([`Named`]).
pub trait InSegment: Sync + Sized + fmt::Debug + 'static {
    /// The segment kind.
    const KIND: Kind;
    /// Bytes it occupies at payload offset 0.
    const SIZE: usize;
    /// What it is called in errors.
    const WHAT: &'static str;
}

impl InSegment for Semaphore {
    const KIND: Kind = Kind::Semaphore;
    const SIZE: usize = Semaphore::SIZE;
    const WHAT: &'static str = "a semaphore";
}

impl InSegment for Event {
    const KIND: Kind = Kind::Event;
    const SIZE: usize = Event::SIZE;
    const WHAT: &'static str = "an event";
}

/// A process-shared primitive `P` in a named segment of its own: dereferences to `P`, whose
/// methods ([`Semaphore::post`], [`Event::set`], ...) act on the shared value directly.
pub struct Named<P: InSegment> {
    segment: Segment,
    created: bool,
    _p: PhantomData<P>,
}

impl<P: InSegment> fmt::Debug for Named<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Named")
            .field("name", self.segment.name())
            .field("value", &**self)
            .finish_non_exhaustive()
    }
}

impl<P: InSegment> std::ops::Deref for Named<P> {
    type Target = P;
    fn deref(&self) -> &P {
        // SAFETY: the payload is mapped read-write for as long as `self.segment`, which the
        // reference borrows, is page-aligned, and holds at least `P::SIZE` bytes (checked in
        // `attach`); `P` is made of atomics, valid for every bit pattern and meant to be shared,
        // including with other processes.
        unsafe { &*self.segment.payload_ptr().as_ptr().cast::<P>() }
    }
}

impl<P: InSegment> Named<P> {
    fn attach(segment: Segment, created: bool) -> Result<Named<P>, SegmentError> {
        let len = segment.payload_len();
        if len < P::SIZE || align_of::<P>() > 4096 {
            return Err(corrupt(
                &segment,
                format!("a payload of {len} bytes cannot hold {}", P::WHAT),
            ));
        }
        Ok(Named {
            segment,
            created,
            _p: PhantomData,
        })
    }

    /// The object's name.
    pub fn name(&self) -> &Name {
        self.segment.name()
    }

    /// Whether this handle created the segment.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }
}

/// The primitive `P` at `p`, the start of a payload of `len` bytes (for initialising it).
///
/// # Safety
///
/// `p` must be valid for reads and writes of `len` bytes for `'a`, and writable through (not
/// derived from a shared reference to bytes without interior mutability).
unsafe fn primitive_at<'a, P: InSegment>(p: *mut u8, len: usize) -> &'a P {
    assert!(len >= P::SIZE && p as usize % align_of::<P>() == 0);
    // SAFETY: `p` is valid for `len >= P::SIZE` bytes for `'a` (the caller's promise and the
    // assertion) and aligned for `P` (asserted; payloads are page-aligned). `P` is made of
    // atomics, valid for every bit pattern and meant to be shared.
    unsafe { &*p.cast::<P>() }
}

/// A named counting semaphore shared by every process that opens it.
///
/// # Examples
///
/// ```
/// use shmbus_core::name::Name;
/// use shmbus_core::named::RawSemaphore;
/// use shmbus_core::segment::{Lifetime, SegmentError};
/// use std::time::Duration;
///
/// let name = Name::new(&format!("doc-rawsem-{}", std::process::id())).unwrap();
/// let s = RawSemaphore::open_or_create(&name, 1, 0o600, Lifetime::Scoped)?;
/// let other = RawSemaphore::open(&name)?; // as another process would
/// assert!(other.try_wait());
/// assert!(!other.wait(Some(Duration::from_millis(1))));
/// s.post().unwrap();
/// assert_eq!(other.value(), 1);
/// # Ok::<(), SegmentError>(())
/// ```
pub type RawSemaphore = Named<Semaphore>;

impl Named<Semaphore> {
    /// Opens the semaphore `name`, creating it with `initial` units (file mode `mode`, lifetime
    /// `lifetime`) if it does not exist.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open_or_create`], and [`SegmentError::InvalidSize`] if `initial`
    /// exceeds [`Semaphore::MAX`].
    pub fn open_or_create(
        name: &Name,
        initial: u32,
        mode: u32,
        lifetime: Lifetime,
    ) -> Result<RawSemaphore, SegmentError> {
        if initial > Semaphore::MAX {
            let reason = format!(
                "an initial count of {initial} exceeds the most, {}",
                Semaphore::MAX
            );
            return Err(SegmentError::InvalidSize {
                name: name.clone(),
                reason,
            });
        }
        let mut opts = create_options(
            Kind::Semaphore,
            semaphore_type(),
            Semaphore::SIZE,
            mode,
            lifetime,
        );
        opts.params[0] = u64::from(initial);
        let expect = Expect::new(Kind::Semaphore, semaphore_type());
        let (segment, created) = Segment::open_or_create(name, &expect, &opts, |p| {
            // SAFETY: `p` is the payload, borrowed mutably for this call, which the reference
            // does not outlive.
            unsafe { primitive_at::<Semaphore>(p.as_mut_ptr(), p.len()) }.init(initial);
        })?;
        Self::attach(segment, created)
    }

    /// Opens the existing semaphore `name`.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open`].
    pub fn open(name: &Name) -> Result<RawSemaphore, SegmentError> {
        let segment = Segment::open(name, &Expect::new(Kind::Semaphore, semaphore_type()))?;
        Self::attach(segment, false)
    }
}

/// A named event (auto- or manual-reset) shared by every process that opens it.
///
/// # Examples
///
/// ```
/// use shmbus_core::name::Name;
/// use shmbus_core::named::RawEvent;
/// use shmbus_core::segment::{Lifetime, SegmentError};
/// use shmbus_core::sync::EventMode;
///
/// let name = Name::new(&format!("doc-rawevent-{}", std::process::id())).unwrap();
/// let e = RawEvent::open_or_create(&name, EventMode::ManualReset, false, 0o600, Lifetime::Scoped)?;
/// let other = RawEvent::open(&name)?; // any mode: it is read from the segment
/// assert_eq!(other.event_mode(), EventMode::ManualReset);
/// e.set();
/// assert!(other.try_wait() && other.try_wait()); // stays set
/// // The other mode is a different type.
/// let wrong = RawEvent::open_or_create(&name, EventMode::AutoReset, false, 0o600, Lifetime::Scoped);
/// assert!(matches!(wrong, Err(SegmentError::WrongType { .. })));
/// # Ok::<(), SegmentError>(())
/// ```
pub type RawEvent = Named<Event>;

impl Named<Event> {
    /// Opens the event `name` of mode `mode`, creating it (set or not, file mode `file_mode`,
    /// lifetime `lifetime`) if it does not exist.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open_or_create`]; an existing event of the other mode is a
    /// [`SegmentError::WrongType`] naming both (`event/auto`, `event/manual`).
    pub fn open_or_create(
        name: &Name,
        mode: EventMode,
        initially_set: bool,
        file_mode: u32,
        lifetime: Lifetime,
    ) -> Result<RawEvent, SegmentError> {
        let mut opts = create_options(
            Kind::Event,
            event_type(mode),
            Event::SIZE,
            file_mode,
            lifetime,
        );
        opts.params[0] = mode as u64;
        opts.params[1] = u64::from(initially_set);
        let expect = Expect::new(Kind::Event, event_type(mode));
        let (segment, created) = Segment::open_or_create(name, &expect, &opts, |p| {
            // SAFETY: `p` is the payload, borrowed mutably for this call, which the reference
            // does not outlive.
            unsafe { primitive_at::<Event>(p.as_mut_ptr(), p.len()) }.init(mode, initially_set);
        })?;
        Self::attach_event(segment, mode, created)
    }

    /// Opens the existing event `name`, whichever its mode.
    ///
    /// # Errors
    ///
    /// Those of [`Segment::open`]; [`SegmentError::Corrupt`] if the segment records no event type
    /// this build knows.
    pub fn open(name: &Name) -> Result<RawEvent, SegmentError> {
        let expect = Expect {
            kind: Kind::Event,
            type_info: None,
            read_only: false,
            timeout: DEFAULT_OPEN_TIMEOUT,
        };
        let segment = Segment::open(name, &expect)?;
        let found = segment.snapshot().type_info.clone();
        let mode = [EventMode::AutoReset, EventMode::ManualReset]
            .into_iter()
            .find(|&m| found.matches(&event_type(m)));
        match mode {
            Some(mode) => Self::attach_event(segment, mode, false),
            None => Err(corrupt(
                &segment,
                format!("it stores {found}, neither event/auto nor event/manual"),
            )),
        }
    }

    /// The event's mode, as its segment's type records it (and the event agrees).
    pub fn event_mode(&self) -> EventMode {
        match self.mode() {
            Some(m) => m,
            // Checked at attach; another process may have overwritten the word since: report
            // what the type says.
            None => EventMode::AutoReset,
        }
    }

    fn attach_event(
        segment: Segment,
        mode: EventMode,
        created: bool,
    ) -> Result<RawEvent, SegmentError> {
        let e = Self::attach(segment, created)?;
        match e.mode() {
            Some(m) if m == mode => Ok(e),
            m => Err(corrupt(
                &e.segment,
                format!("its type says {mode:?} but the event holds {m:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{self, exists};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn name(tag: &str) -> Name {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Name::new(&format!("unit-named-{}-{n}-{tag}", std::process::id())).unwrap()
    }

    fn u64_mutex(name: &Name, initial: u64) -> RawMutex {
        let init = move |v: &mut [u8]| v[..8].copy_from_slice(&initial.to_ne_bytes());
        RawMutex::open_or_create(
            name,
            &TypeInfo::pod::<u64>(),
            8,
            init,
            0o600,
            Lifetime::Scoped,
        )
        .unwrap()
    }

    fn read_u64(g: &RawGuard<'_>) -> u64 {
        u64::from_ne_bytes(g.bytes()[..8].try_into().unwrap())
    }

    #[test]
    fn mutex_is_shared_between_handles_and_removed_by_the_last() {
        let n = name("mutex");
        let a = u64_mutex(&n, 5);
        assert!(a.created());
        let b = u64_mutex(&n, 99);
        assert!(!b.created(), "the second open_or_create opens");
        let c = RawMutex::open(&n, &TypeInfo::pod::<u64>()).unwrap();
        assert_eq!((a.value_len(), b.value_len(), c.value_len()), (8, 8, 8));
        {
            let mut g = b.lock(None).unwrap();
            assert!(!g.owner_died());
            assert_eq!(
                read_u64(&g),
                5,
                "the creator's initial value, not the opener's"
            );
            assert_eq!(g.bytes().as_ptr() as usize % 64, 0);
            g.bytes_mut().copy_from_slice(&6u64.to_ne_bytes());
            assert!(matches!(a.try_lock(), Err(TryLockError::WouldBlock)));
            assert!(matches!(
                c.lock(Some(Duration::from_millis(5))),
                Err(LockError::Deadlock)
            ));
        }
        assert_eq!(read_u64(&c.lock(Some(Duration::from_secs(5))).unwrap()), 6);
        drop((a, b));
        assert!(exists(&n));
        drop(c);
        assert!(!exists(&n));
    }

    #[test]
    fn mutex_times_out_while_another_thread_holds_it() {
        let n = name("mutex-timeout");
        let m = u64_mutex(&n, 0);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let m = &m;
            s.spawn(move || {
                let _g = m.lock(None).unwrap();
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            });
            locked_rx.recv().unwrap();
            assert!(matches!(
                m.lock(Some(Duration::from_millis(20))),
                Err(LockError::Timeout)
            ));
            assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
            release_tx.send(()).unwrap();
        });
        assert!(m.try_lock().is_ok());
    }

    #[test]
    fn a_dead_holder_is_reported_and_repairable_or_not_recoverable() {
        let n = name("mutex-died");
        let m = u64_mutex(&n, 1);
        let abandon = || {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut g = m.lock(None).unwrap();
                    g.bytes_mut().copy_from_slice(&0xD1Du64.to_ne_bytes());
                    std::mem::forget(g);
                });
            })
        };
        abandon();
        {
            let mut g = m.lock(Some(Duration::from_secs(5))).unwrap();
            assert!(g.owner_died());
            assert_eq!(read_u64(&g), 0xD1D);
            g.bytes_mut().copy_from_slice(&1u64.to_ne_bytes());
            g.make_consistent();
            assert!(!g.owner_died());
            g.make_consistent(); // harmless when not needed
        }
        assert!(!m.try_lock().unwrap().owner_died());

        abandon();
        {
            // Not `try_lock`: the scope is over once the closure has returned, possibly before
            // the thread has exited and so released the mutex.
            let g = m.lock(Some(Duration::from_secs(5))).unwrap();
            assert!(g.owner_died());
            // Dropped without make_consistent.
        }
        assert!(matches!(
            m.lock(Some(Duration::from_millis(5))),
            Err(LockError::NotRecoverable)
        ));
        assert!(matches!(m.try_lock(), Err(TryLockError::NotRecoverable)));
        drop(m);
        assert!(
            !exists(&n),
            "the leaked guards' threads are gone, so the segment is released"
        );
    }

    #[test]
    fn a_guard_leaked_by_a_dropped_handle_is_an_owner_death() {
        let n = name("mutex-leak");
        let m = u64_mutex(&n, 0);
        let other = RawMutex::open(&n, &TypeInfo::pod::<u64>()).unwrap();
        std::mem::forget(m.lock(None).unwrap());
        // The leaked guard's handle still lives: its holder row is alive, so others wait.
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(m);
        // Its row's lease went with it: the next locker takes over.
        let mut g = other.lock(Some(Duration::from_secs(5))).unwrap();
        assert!(g.owner_died());
        g.make_consistent();
        drop(g);
        assert!(!other.lock(None).unwrap().owner_died());
        drop(other);
        assert!(!exists(&n));
    }

    #[test]
    fn mutex_sizes_are_checked() {
        let n = name("mutex-size");
        let ty = TypeInfo::pod::<u64>();
        assert!(matches!(
            RawMutex::open_or_create(&n, &ty, 4, |_| {}, 0o600, Lifetime::Scoped),
            Err(SegmentError::InvalidSize { .. })
        ));
        assert!(!exists(&n));
        // A segment of the right kind and type whose payload is too short for mutex + value.
        let seg =
            Segment::create(&n, &CreateOptions::new(Kind::Mutex, ty.clone(), 64), |_| {}).unwrap();
        match RawMutex::open(&n, &ty) {
            Err(SegmentError::Corrupt { reason, .. }) => {
                assert!(reason.contains("64 bytes"), "{reason}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        drop(seg);
        assert!(!exists(&n));

        // A larger value than the type, and a zero-sized type.
        let big =
            RawMutex::open_or_create(&n, &ty, 100, |v| v.fill(1), 0o600, Lifetime::Scoped).unwrap();
        assert_eq!(big.value_len(), 100);
        assert!(big.lock(None).unwrap().bytes().iter().all(|&b| b == 1));
        drop(big);
        let unit = RawMutex::open_or_create(
            &n,
            &TypeInfo::pod::<()>(),
            0,
            |_| {},
            0o600,
            Lifetime::Scoped,
        )
        .unwrap();
        assert!(unit.lock(None).unwrap().bytes().is_empty());
        drop(unit);
        assert!(!exists(&n));
    }

    #[test]
    fn wrong_kind_and_type_are_refused() {
        let n = name("kinds");
        let m = u64_mutex(&n, 0);
        assert!(matches!(
            RawMutex::open(&n, &TypeInfo::pod::<u32>()),
            Err(SegmentError::WrongType { .. })
        ));
        assert!(matches!(
            RawSemaphore::open(&n),
            Err(SegmentError::WrongKind {
                found: Kind::Mutex,
                ..
            })
        ));
        assert!(matches!(
            RawEvent::open(&n),
            Err(SegmentError::WrongKind {
                found: Kind::Mutex,
                ..
            })
        ));
        drop(m);
        assert!(matches!(
            RawSemaphore::open(&n),
            Err(SegmentError::NotFound(_))
        ));
    }

    #[test]
    fn semaphore_is_shared_between_handles() {
        let n = name("sem");
        let a = RawSemaphore::open_or_create(&n, 2, 0o600, Lifetime::Scoped).unwrap();
        let b = RawSemaphore::open_or_create(&n, 50, 0o600, Lifetime::Scoped).unwrap();
        assert!(a.created() && !b.created());
        assert_eq!(b.value(), 2);
        assert!(b.try_wait() && b.wait(None));
        assert!(!a.try_wait());
        assert!(!a.wait(Some(Duration::from_millis(5))));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| a.wait(Some(Duration::from_secs(10))));
            std::thread::sleep(Duration::from_millis(10));
            b.post().unwrap();
            assert!(waiter.join().unwrap());
        });
        assert_eq!(a.value(), 0);
        assert!(matches!(
            RawSemaphore::open_or_create(&name("sem-max"), u32::MAX, 0o600, Lifetime::Scoped),
            Err(SegmentError::InvalidSize { .. })
        ));
        drop((a, b));
        assert!(!exists(&n));
    }

    #[test]
    fn event_modes_are_types() {
        let n = name("event");
        let a = RawEvent::open_or_create(&n, EventMode::AutoReset, true, 0o600, Lifetime::Scoped)
            .unwrap();
        assert!(a.created() && a.is_set());
        match RawEvent::open_or_create(&n, EventMode::ManualReset, false, 0o600, Lifetime::Scoped) {
            Err(e @ SegmentError::WrongType { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("event/auto") && msg.contains("event/manual"),
                    "{msg}"
                );
            }
            other => panic!("expected WrongType, got {other:?}"),
        }
        let b = RawEvent::open(&n).unwrap();
        assert_eq!(b.event_mode(), EventMode::AutoReset);
        assert!(b.try_wait(), "the initial set");
        assert!(!a.try_wait(), "consumed by the other handle");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| b.wait(Some(Duration::from_secs(10))));
            std::thread::sleep(Duration::from_millis(10));
            a.set();
            assert!(waiter.join().unwrap());
        });
        assert!(!a.is_set());
        drop((a, b));
        assert!(!exists(&n));

        let m =
            RawEvent::open_or_create(&n, EventMode::ManualReset, false, 0o600, Lifetime::Scoped)
                .unwrap();
        let o = RawEvent::open_or_create(&n, EventMode::ManualReset, true, 0o600, Lifetime::Scoped)
            .unwrap();
        assert!(!o.created() && !o.is_set(), "the creator's initial state");
        o.set();
        assert!(m.wait(Some(Duration::ZERO)) && m.try_wait() && o.try_wait());
        m.reset();
        assert!(!o.wait(Some(Duration::from_millis(5))));
        drop((m, o));
        assert!(!exists(&n));
    }

    #[test]
    fn persistent_objects_outlive_their_handles() {
        let n = name("persistent");
        let s = RawSemaphore::open_or_create(&n, 3, 0o600, Lifetime::Persistent).unwrap();
        drop(s);
        assert!(exists(&n));
        let s = RawSemaphore::open(&n).unwrap();
        assert_eq!(s.value(), 3);
        drop(s);
        segment::unlink(&n).unwrap();
        assert!(!exists(&n));
    }
}

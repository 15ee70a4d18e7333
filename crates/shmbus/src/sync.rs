//! Named, process-shared synchronisation: [`Mutex`], [`Semaphore`] and [`Event`].
//!
//! Each lives in a shared-memory segment of its own that any process opens by name, like a
//! topic. By default it is private to its owner (file mode `0o600`) and removed when the last
//! process using it leaves or dies; [`SyncOptions`] changes both.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;
use shmbus_core::layout::{short_type_name, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::named::{RawEvent, RawGuard, RawMutex, RawSemaphore, MUTEX_VALUE_OFFSET};
use shmbus_core::segment::Lifetime;
pub use shmbus_core::sync::EventMode;
use shmbus_core::sync::{LockError, SemaphoreError, TryLockError};

use crate::error::OpenError;

/// How a named [`Mutex`], [`Semaphore`] or [`Event`] is created when it does not exist yet.
/// Opening an existing one ignores them.
///
/// # Examples
///
/// ```
/// use shmbus::{Name, Semaphore, SyncOptions};
///
/// let name = format!("doc-syncoptions-{}", std::process::id());
/// // Readable and writable by every user, and kept when its last user leaves.
/// let opts = SyncOptions::new().mode(0o666).persistent(true);
/// let permits = Semaphore::open_or_create_with(&name, 4, opts)?;
/// drop(permits);
/// assert_eq!(Semaphore::open(&name)?.value(), 4); // still there
/// shmbus::unlink(&Name::new(&name)?)?; // persistent objects are removed explicitly
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOptions {
    mode: u32,
    persistent: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            mode: 0o600,
            persistent: false,
        }
    }
}

impl SyncOptions {
    /// The defaults: file mode `0o600` (owner only), removed when the last user leaves or dies.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::SyncOptions;
    ///
    /// assert_eq!(SyncOptions::new(), SyncOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Permission bits of the segment file (default `0o600`); widen them to share with other
    /// users.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode, SyncOptions};
    /// use std::os::unix::fs::PermissionsExt;
    ///
    /// let name = format!("doc-syncoptions-mode-{}", std::process::id());
    /// let e = Event::open_or_create_with(&name, EventMode::AutoReset, false, SyncOptions::new().mode(0o640))?;
    /// let meta = std::fs::metadata(format!("/dev/shm/shmbus.{name}"))?;
    /// assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    /// # drop(e);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Keep the object when its last user leaves, until [`unlink`](crate::unlink) (default:
    /// removed with its last user).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Mutex, Name, SyncOptions};
    ///
    /// let name = format!("doc-syncoptions-persistent-{}", std::process::id());
    /// let m = Mutex::open_or_create_with(&name, 1u64, SyncOptions::new().persistent(true))?;
    /// *m.lock()? = 2;
    /// drop(m);
    /// assert_eq!(*Mutex::<u64>::open(&name)?.lock()?, 2); // the value survived
    /// shmbus::unlink(&Name::new(&name)?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    pub(crate) fn file_mode(&self) -> u32 {
        self.mode
    }

    pub(crate) fn lifetime_of(&self) -> Lifetime {
        self.lifetime()
    }

    fn lifetime(&self) -> Lifetime {
        if self.persistent {
            Lifetime::Persistent
        } else {
            Lifetime::Scoped
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mutex
// ---------------------------------------------------------------------------------------------

/// A named mutex guarding a plain-old-data value, shared by every process that opens it.
///
/// The value lives in shared memory next to a robust, process-shared mutex; [`lock`](Self::lock)
/// returns a [`MutexGuard`] that reads and writes it in place and unlocks on drop. The segment
/// records `T`'s name, size and alignment: opening it with another type fails, naming both.
///
/// # A holder that dies
///
/// If the process (or thread) holding the mutex dies, nobody waits forever: the next locker gets
/// the mutex with [`MutexGuard::owner_died`] set, as the value may be half-updated. It must
/// repair the value and call [`MutexGuard::mark_consistent`] before dropping the guard;
/// otherwise the mutex becomes permanently unusable ([`LockError::NotRecoverable`]) for every
/// process, and the object must be removed and made anew.
///
/// # Examples
///
/// ```
/// use shmbus::Mutex;
///
/// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Stats { requests: u64, errors: u64 }
///
/// let name = format!("doc-mutex-{}", std::process::id());
/// // In every process that shares the statistics:
/// let stats = Mutex::open_or_create(&name, Stats { requests: 0, errors: 0 })?;
/// {
///     let mut s = stats.lock()?;
///     if s.owner_died() {
///         *s = Stats { requests: 0, errors: 0 }; // a holder died mid-update: start over
///         s.mark_consistent();
///     }
///     s.requests += 1;
/// } // unlocked here
/// assert_eq!(stats.lock()?.requests, 1);
///
/// drop(stats); // the last user out removes it
/// assert!(!std::path::Path::new(&format!("/dev/shm/shmbus.{name}")).exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Mutex<T: Pod> {
    raw: RawMutex,
    _t: PhantomData<T>,
}

impl<T: Pod> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("name", &self.raw.name().as_str())
            .field("type", &short_type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Mutex<T> {
    fn type_info() -> Result<TypeInfo, OpenError> {
        let align = align_of::<T>();
        if align > MUTEX_VALUE_OFFSET {
            return Err(OpenError::UnsupportedType {
                type_name: short_type_name::<T>().to_owned(),
                reason: format!(
                    "alignment {align}: a Mutex's value may have an alignment of at most {MUTEX_VALUE_OFFSET}"
                ),
            });
        }
        Ok(TypeInfo::pod::<T>())
    }

    /// Opens the mutex `name` guarding a `T`, creating it, unlocked and holding `initial`, if
    /// it does not exist (with the default [`SyncOptions`]).
    ///
    /// # Errors
    ///
    /// [`OpenError::Name`] for an invalid name, [`OpenError::UnsupportedType`] if `T`'s
    /// alignment exceeds 64, [`OpenError::Segment`] if the segment could not be opened or
    /// created (another kind of object or another type under the name, a full `/dev/shm`,
    /// missing permission, ...).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Mutex;
    ///
    /// let name = format!("doc-mutex-ooc-{}", std::process::id());
    /// let a = Mutex::open_or_create(&name, 10u32)?;
    /// let b = Mutex::open_or_create(&name, 20u32)?; // exists: opened, `initial` unused
    /// assert!(a.created() && !b.created());
    /// assert_eq!(*b.lock()?, 10);
    /// // Another type under the same name is refused.
    /// assert!(Mutex::open_or_create(&name, 0u64).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create(name: &str, initial: T) -> Result<Self, OpenError> {
        Self::open_or_create_with(name, initial, SyncOptions::default())
    }

    /// As [`open_or_create`](Self::open_or_create), creating with `opts`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Mutex, SyncOptions};
    ///
    /// let name = format!("doc-mutex-with-{}", std::process::id());
    /// let m = Mutex::open_or_create_with(&name, [0u8; 16], SyncOptions::new().mode(0o660))?;
    /// m.lock()?[0] = 1;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create_with(
        name: &str,
        initial: T,
        opts: SyncOptions,
    ) -> Result<Self, OpenError> {
        let type_info = Self::type_info()?;
        let name = Name::new(name)?;
        let init = move |value: &mut [u8]| {
            value[..size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&initial));
        };
        let raw = RawMutex::open_or_create(
            &name,
            &type_info,
            size_of::<T>(),
            init,
            opts.mode,
            opts.lifetime(),
        )?;
        Ok(Mutex {
            raw,
            _t: PhantomData,
        })
    }

    /// Opens the existing mutex `name` guarding a `T`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create); a mutex that does not exist is
    /// `OpenError::Segment(SegmentError::NotFound(_))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Mutex, OpenError, SegmentError};
    ///
    /// let name = format!("doc-mutex-open-{}", std::process::id());
    /// assert!(matches!(
    ///     Mutex::<u64>::open(&name),
    ///     Err(OpenError::Segment(SegmentError::NotFound(_)))
    /// ));
    /// let creator = Mutex::open_or_create(&name, 5u64)?;
    /// let opener = Mutex::<u64>::open(&name)?;
    /// assert_eq!(*opener.lock()?, 5);
    /// # drop(creator);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(name: &str) -> Result<Self, OpenError> {
        let type_info = Self::type_info()?;
        let raw = RawMutex::open(&Name::new(name)?, &type_info)?;
        Ok(Mutex {
            raw,
            _t: PhantomData,
        })
    }

    /// Locks the mutex, waiting as long as another thread of any process holds it.
    ///
    /// A holder that dies releases it (the guard then reports
    /// [`owner_died`](MutexGuard::owner_died)), so this never hangs on a dead process.
    ///
    /// # Errors
    ///
    /// [`LockError::NotRecoverable`] if an earlier locker after a dead holder dropped its guard
    /// without [`mark_consistent`](MutexGuard::mark_consistent); [`LockError::Deadlock`] if this
    /// thread holds the mutex already (reported instead of hanging); [`LockError::Os`] for
    /// memory that does not hold a working mutex.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Mutex;
    ///
    /// let name = format!("doc-mutex-lock-{}", std::process::id());
    /// let counter = Mutex::open_or_create(&name, 0u64)?;
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| *counter.lock().unwrap() += 1);
    ///     }
    /// });
    /// assert_eq!(*counter.lock()?, 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError> {
        self.raw.lock(None).map(MutexGuard::new)
    }

    /// Locks the mutex, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] if another thread still held it; otherwise as
    /// [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{LockError, Mutex};
    /// use std::time::Duration;
    ///
    /// let name = format!("doc-mutex-timeout-{}", std::process::id());
    /// let m = Mutex::open_or_create(&name, 0u8)?;
    /// let held = m.lock()?;
    /// std::thread::scope(|s| {
    ///     let r = s.spawn(|| m.lock_timeout(Duration::from_millis(10)).map(|_| ())).join().unwrap();
    ///     assert!(matches!(r, Err(LockError::Timeout)));
    /// });
    /// drop(held);
    /// assert!(m.lock_timeout(Duration::from_millis(10)).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, LockError> {
        self.raw.lock(Some(timeout)).map(MutexGuard::new)
    }

    /// Locks the mutex if no thread holds it, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if a thread (this one included) holds it;
    /// [`TryLockError::NotRecoverable`] and [`TryLockError::Os`] as for [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Mutex, TryLockError};
    ///
    /// let name = format!("doc-mutex-try-{}", std::process::id());
    /// let m = Mutex::open_or_create(&name, 0i32)?;
    /// let g = m.try_lock()?;
    /// assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
    /// drop(g);
    /// assert!(m.try_lock().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError> {
        self.raw.try_lock().map(MutexGuard::new)
    }

    /// The mutex's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Mutex;
    ///
    /// let name = format!("doc-mutex-name-{}", std::process::id());
    /// assert_eq!(Mutex::open_or_create(&name, ())?.name(), name);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    /// Whether this handle created the mutex (rather than opening an existing one).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Mutex;
    ///
    /// let name = format!("doc-mutex-created-{}", std::process::id());
    /// let first = Mutex::open_or_create(&name, 0u16)?;
    /// assert!(first.created());
    /// assert!(!Mutex::<u16>::open(&name)?.created());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn created(&self) -> bool {
        self.raw.created()
    }
}

/// A locked [`Mutex`]: dereferences to the value, in shared memory. Dropping it unlocks.
///
/// It is not `Send`: the mutex must be unlocked by the thread that locked it.
///
/// # The `EOWNERDEAD` contract
///
/// If the previous holder died holding the mutex, the guard reports
/// [`owner_died`](Self::owner_died) and the value may be half-updated. Repair the value, then call
/// [`mark_consistent`](Self::mark_consistent) before dropping the guard. Dropping it without
/// doing so makes the mutex permanently not recoverable for everyone: every later lock, in
/// every process, fails with [`LockError::NotRecoverable`].
///
/// # Examples
///
/// ```
/// use shmbus::Mutex;
///
/// let name = format!("doc-mutexguard-{}", std::process::id());
/// let m = Mutex::open_or_create(&name, 0u32)?;
/// // A holder that ends without unlocking, as a killed process would.
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let mut g = m.lock().unwrap();
///         *g = 0xBAD; // half-way through an update...
///         std::mem::forget(g); // ...and gone
///     });
/// });
/// let mut g = m.lock()?;
/// assert!(g.owner_died());
/// assert_eq!(*g, 0xBAD);
/// *g = 0; // repair
/// g.mark_consistent();
/// drop(g);
/// assert!(!m.lock()?.owner_died());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MutexGuard<'a, T: Pod> {
    raw: RawGuard<'a>,
    _t: PhantomData<&'a mut T>,
}

impl<'a, T: Pod> MutexGuard<'a, T> {
    fn new(raw: RawGuard<'a>) -> Self {
        MutexGuard {
            raw,
            _t: PhantomData,
        }
    }

    /// Whether the previous holder died holding the mutex: the value may be inconsistent.
    /// Repair it and call [`mark_consistent`](Self::mark_consistent) before dropping the guard.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Mutex;
    ///
    /// let name = format!("doc-mutexguard-died-{}", std::process::id());
    /// let m = Mutex::open_or_create(&name, 0u64)?;
    /// assert!(!m.lock()?.owner_died()); // the usual case
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner_died(&self) -> bool {
        self.raw.owner_died()
    }

    /// Declares the value repaired after [`owner_died`](Self::owner_died), so that dropping the
    /// guard leaves a normal, usable mutex. Does nothing when the previous holder did not die.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Mutex;
    ///
    /// let name = format!("doc-mutexguard-consistent-{}", std::process::id());
    /// let m = Mutex::open_or_create(&name, 1u64)?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| std::mem::forget(m.lock().unwrap()));
    /// });
    /// let mut g = m.lock()?;
    /// if g.owner_died() {
    ///     *g = 1;
    ///     g.mark_consistent();
    /// }
    /// assert!(!g.owner_died());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_consistent(&mut self) {
        self.raw.make_consistent();
    }
}

impl<T: Pod> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // The value is 64-byte aligned (`align_of::<T>() <= 64`, checked at open) and at least
        // `size_of::<T>()` bytes long (checked by the core layer at open).
        bytemuck::from_bytes(&self.raw.bytes()[..size_of::<T>()])
    }
}

impl<T: Pod> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        bytemuck::from_bytes_mut(&mut self.raw.bytes_mut()[..size_of::<T>()])
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("value", &**self)
            .field("owner_died", &self.owner_died())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Semaphore
// ---------------------------------------------------------------------------------------------

/// A named counting semaphore, shared by every process that opens it.
///
/// [`post`](Self::post) adds a unit and wakes one waiter, in any process; the waits take one.
/// Neither makes a system call unless someone must sleep or be woken. A waiter that dies costs
/// nothing but, at worst, one unneeded wake-up.
///
/// # Examples
///
/// ```
/// use shmbus::Semaphore;
/// use std::time::Duration;
///
/// let name = format!("doc-semaphore-{}", std::process::id());
/// // A producer process:
/// let items = Semaphore::open_or_create(&name, 0)?;
/// // A consumer process (here a thread):
/// std::thread::scope(|s| {
///     let consumer = s.spawn(|| {
///         let items = Semaphore::open(&name).unwrap();
///         items.wait_timeout(Duration::from_secs(10))
///     });
///     items.post().unwrap();
///     assert!(consumer.join().unwrap());
/// });
/// assert_eq!(items.value(), 0);
/// drop(items);
/// assert!(!std::path::Path::new(&format!("/dev/shm/shmbus.{name}")).exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Semaphore {
    raw: RawSemaphore,
}

impl Semaphore {
    /// Opens the semaphore `name`, creating it with `initial` units if it does not exist (with
    /// the default [`SyncOptions`]).
    ///
    /// # Errors
    ///
    /// [`OpenError::Name`] for an invalid name; [`OpenError::Segment`] if the segment could not
    /// be opened or created (another kind of object under the name, an `initial` above
    /// `i32::MAX`, a full `/dev/shm`, ...).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-ooc-{}", std::process::id());
    /// let a = Semaphore::open_or_create(&name, 3)?;
    /// let b = Semaphore::open_or_create(&name, 100)?; // exists: opened
    /// assert_eq!((a.created(), b.created(), b.value()), (true, false, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create(name: &str, initial: u32) -> Result<Self, OpenError> {
        Self::open_or_create_with(name, initial, SyncOptions::default())
    }

    /// As [`open_or_create`](Self::open_or_create), creating with `opts`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Semaphore, SyncOptions};
    ///
    /// let name = format!("doc-semaphore-with-{}", std::process::id());
    /// let s = Semaphore::open_or_create_with(&name, 1, SyncOptions::new().mode(0o660))?;
    /// assert!(s.try_wait());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create_with(
        name: &str,
        initial: u32,
        opts: SyncOptions,
    ) -> Result<Self, OpenError> {
        let raw =
            RawSemaphore::open_or_create(&Name::new(name)?, initial, opts.mode, opts.lifetime())?;
        Ok(Semaphore { raw })
    }

    /// Opens the existing semaphore `name`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create); one that does not exist is
    /// `OpenError::Segment(SegmentError::NotFound(_))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{OpenError, SegmentError, Semaphore};
    ///
    /// let name = format!("doc-semaphore-open-{}", std::process::id());
    /// assert!(matches!(Semaphore::open(&name), Err(OpenError::Segment(SegmentError::NotFound(_)))));
    /// let s = Semaphore::open_or_create(&name, 2)?;
    /// assert_eq!(Semaphore::open(&name)?.value(), 2);
    /// # drop(s);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(name: &str) -> Result<Self, OpenError> {
        let raw = RawSemaphore::open(&Name::new(name)?)?;
        Ok(Semaphore { raw })
    }

    /// Adds one unit and wakes one waiter, if any, in any process. Everything written before
    /// `post` is visible to the waiter that takes the unit.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::Overflow`] if the count is already `i32::MAX`; nothing changes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-post-{}", std::process::id());
    /// let s = Semaphore::open_or_create(&name, 0)?;
    /// s.post()?;
    /// s.post()?;
    /// assert_eq!(s.value(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post(&self) -> Result<(), SemaphoreError> {
        self.raw.post()
    }

    /// Takes one unit if there is one, without waiting. Returns whether it did.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-try-{}", std::process::id());
    /// let s = Semaphore::open_or_create(&name, 1)?;
    /// assert!(s.try_wait());
    /// assert!(!s.try_wait());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_wait(&self) -> bool {
        self.raw.try_wait()
    }

    /// Takes one unit, waiting as long as it takes for one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-wait-{}", std::process::id());
    /// let s = Semaphore::open_or_create(&name, 0)?;
    /// std::thread::scope(|t| {
    ///     t.spawn(|| s.post().unwrap());
    ///     s.wait(); // returns once the other thread has posted
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self) {
        while !self.raw.wait(None) {}
    }

    /// Takes one unit, waiting at most `timeout` for one. Returns whether it did.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    /// use std::time::Duration;
    ///
    /// let name = format!("doc-semaphore-timeout-{}", std::process::id());
    /// let s = Semaphore::open_or_create(&name, 1)?;
    /// assert!(s.wait_timeout(Duration::from_millis(10)));
    /// assert!(!s.wait_timeout(Duration::from_millis(10))); // none left
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.raw.wait(Some(timeout))
    }

    /// The current count: a snapshot, possibly stale at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-value-{}", std::process::id());
    /// assert_eq!(Semaphore::open_or_create(&name, 7)?.value(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn value(&self) -> u32 {
        self.raw.value()
    }

    /// The semaphore's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-name-{}", std::process::id());
    /// assert_eq!(Semaphore::open_or_create(&name, 0)?.name(), name);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    /// Whether this handle created the semaphore.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::Semaphore;
    ///
    /// let name = format!("doc-semaphore-created-{}", std::process::id());
    /// let s = Semaphore::open_or_create(&name, 0)?;
    /// assert!(s.created() && !Semaphore::open(&name)?.created());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn created(&self) -> bool {
        self.raw.created()
    }
}

// ---------------------------------------------------------------------------------------------
// Event
// ---------------------------------------------------------------------------------------------

/// A named event, shared by every process that opens it.
///
/// * [`EventMode::AutoReset`]: each [`set`](Self::set) lets exactly one waiter through and
///   clears the event again.
/// * [`EventMode::ManualReset`]: a set lets every waiter through, present and future, until
///   [`reset`](Self::reset).
///
/// The mode is part of the object's type: opening an auto-reset event as a manual-reset one, or
/// the reverse, fails with a wrong-type error naming both (`event/auto`, `event/manual`).
///
/// # Examples
///
/// ```
/// use shmbus::{Event, EventMode};
/// use std::time::Duration;
///
/// let name = format!("doc-event-{}", std::process::id());
/// let shutdown = Event::open_or_create(&name, EventMode::ManualReset, false)?;
/// std::thread::scope(|s| {
///     let workers: Vec<_> = (0..3)
///         .map(|_| s.spawn(|| Event::open(&name).unwrap().wait_timeout(Duration::from_secs(10))))
///         .collect();
///     shutdown.set(); // wakes them all
///     assert!(workers.into_iter().all(|w| w.join().unwrap()));
/// });
/// // The other mode is another type.
/// assert!(Event::open_or_create(&name, EventMode::AutoReset, false).is_err());
/// drop(shutdown);
/// assert!(!std::path::Path::new(&format!("/dev/shm/shmbus.{name}")).exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Event {
    raw: std::sync::Arc<RawEvent>,
}

impl Event {
    /// Opens the event `name` of mode `mode`, creating it (set if `initially_set`) if it does
    /// not exist (with the default [`SyncOptions`]).
    ///
    /// # Errors
    ///
    /// [`OpenError::Name`] for an invalid name; [`OpenError::Segment`] if the segment could not
    /// be opened or created, including an existing event of the other mode
    /// ([`SegmentError::WrongType`](crate::SegmentError::WrongType)).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode, OpenError, SegmentError};
    ///
    /// let name = format!("doc-event-ooc-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, true)?;
    /// assert!(e.is_set());
    /// match Event::open_or_create(&name, EventMode::ManualReset, false) {
    ///     Err(OpenError::Segment(err @ SegmentError::WrongType { .. })) => {
    ///         let msg = err.to_string();
    ///         assert!(msg.contains("event/auto") && msg.contains("event/manual"), "{msg}");
    ///     }
    ///     other => panic!("expected a wrong type, got {other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create(
        name: &str,
        mode: EventMode,
        initially_set: bool,
    ) -> Result<Self, OpenError> {
        Self::open_or_create_with(name, mode, initially_set, SyncOptions::default())
    }

    /// As [`open_or_create`](Self::open_or_create), creating with `opts`.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode, SyncOptions};
    ///
    /// let name = format!("doc-event-with-{}", std::process::id());
    /// let e = Event::open_or_create_with(&name, EventMode::AutoReset, false, SyncOptions::new().mode(0o660))?;
    /// assert!(!e.is_set());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_create_with(
        name: &str,
        mode: EventMode,
        initially_set: bool,
        opts: SyncOptions,
    ) -> Result<Self, OpenError> {
        let raw = RawEvent::open_or_create(
            &Name::new(name)?,
            mode,
            initially_set,
            opts.mode,
            opts.lifetime(),
        )?;
        Ok(Event {
            raw: std::sync::Arc::new(raw),
        })
    }

    /// Opens the existing event `name`, whichever its mode (see [`mode`](Self::mode)).
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create); one that does not exist is
    /// `OpenError::Segment(SegmentError::NotFound(_))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-open-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::ManualReset, false)?;
    /// assert_eq!(Event::open(&name)?.mode(), EventMode::ManualReset);
    /// # drop(e);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(name: &str) -> Result<Self, OpenError> {
        let raw = RawEvent::open(&Name::new(name)?)?;
        Ok(Event {
            raw: std::sync::Arc::new(raw),
        })
    }

    /// Sets the event and wakes waiters, in any process: one (auto-reset) or all (manual-reset).
    /// Everything written before `set` is visible to a waiter it releases.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-set-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, false)?;
    /// e.set();
    /// e.set(); // sets do not add up
    /// assert!(e.try_wait());
    /// assert!(!e.try_wait());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set(&self) {
        self.raw.set()
    }

    /// Clears the event (mostly for manual-reset events).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-reset-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::ManualReset, true)?;
    /// e.reset();
    /// assert!(!e.is_set());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reset(&self) {
        self.raw.reset()
    }

    /// Whether the event is set now: a snapshot that does not consume an auto-reset event.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-isset-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, true)?;
    /// assert!(e.is_set() && e.is_set()); // looking does not consume
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.raw.is_set()
    }

    /// Waits as long as it takes for the event. In auto-reset mode, consumes the set.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-wait-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, false)?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| e.set());
    ///     e.wait();
    /// });
    /// assert!(!e.is_set()); // consumed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self) {
        while !self.raw.wait(None) {}
    }

    /// Waits at most `timeout` for the event. Returns whether it was set (in auto-reset mode:
    /// whether this caller consumed a set; in manual-reset mode: whether it was set at some
    /// moment during the wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    /// use std::time::Duration;
    ///
    /// let name = format!("doc-event-timeout-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::ManualReset, false)?;
    /// assert!(!e.wait_timeout(Duration::from_millis(10)));
    /// e.set();
    /// assert!(e.wait_timeout(Duration::from_millis(10)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.raw.wait(Some(timeout))
    }

    /// Returns whether the event is set, without waiting; in auto-reset mode, consumes it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-try-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::ManualReset, true)?;
    /// assert!(e.try_wait() && e.try_wait()); // manual-reset: stays set
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_wait(&self) -> bool {
        self.raw.try_wait()
    }

    /// Waits until the event is set, awaited: [`wait`](Self::wait) for async code, on any
    /// executor (feature `async`). In auto-reset mode the set is consumed by the future that
    /// completes; a future dropped before it completed consumed nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-wait-async-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, false)?;
    /// let setter = {
    ///     let name = name.clone();
    ///     std::thread::spawn(move || {
    ///         std::thread::sleep(std::time::Duration::from_millis(20));
    ///         Event::open(&name).unwrap().set();
    ///     })
    /// };
    /// futures::executor::block_on(e.wait_async());
    /// assert!(!e.try_wait()); // consumed by the wait
    /// setter.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "async")]
    pub fn wait_async(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        let interest = shmbus_core::waitset::reactor::Interest::event(self.raw.clone());
        crate::aio::Op::new(self, interest, |e: &Event| {
            if e.raw.try_wait() {
                Ok(())
            } else {
                Err(e)
            }
        })
    }

    /// The event's mode.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-mode-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, false)?;
    /// assert_eq!(e.mode(), EventMode::AutoReset);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mode(&self) -> EventMode {
        self.raw.event_mode()
    }

    /// The event's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-name-{}", std::process::id());
    /// assert_eq!(Event::open_or_create(&name, EventMode::AutoReset, false)?.name(), name);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        self.raw.name().as_str()
    }

    /// Whether this handle created the event.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmbus::{Event, EventMode};
    ///
    /// let name = format!("doc-event-created-{}", std::process::id());
    /// let e = Event::open_or_create(&name, EventMode::AutoReset, false)?;
    /// assert!(e.created() && !Event::open(&name)?.created());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn created(&self) -> bool {
        self.raw.created()
    }
}

impl crate::waitset::sealed::Sealed for Event {
    fn source(&self) -> shmbus_core::waitset::Source<'_> {
        shmbus_core::waitset::Source::Event(&self.raw)
    }
}

//! A process-shared robust mutex: glibc's `pthread_mutex_t`.
//!
//! Why not a futex word of our own: robustness. When a thread dies, the kernel walks the list of
//! robust mutexes that glibc registered for it (`set_robust_list`), marks each one it held as
//! "owner died" and wakes a waiter. That makes a SIGKILLed holder detectable at the next lock,
//! with no polling and no liveness check, and glibc already implements the protocol.
//!
//! # Not `pthread_mutex_trylock`
//!
//! glibc's `pthread_mutex_trylock` on a robust mutex in the not-recoverable state returns
//! `ENOTRECOVERABLE` but leaves the lock word holding the caller's thread id (seen with glibc
//! 2.36): afterwards the caller gets `EDEADLK` and every other thread blocks instead of being told
//! the mutex is dead, and as the mutex is not on the caller's robust list, not even its death
//! releases it. `pthread_mutex_lock` and `pthread_mutex_clocklock` handle that state correctly.
//! So the non-blocking attempt here is `pthread_mutex_clocklock` with a deadline in the past,
//! which takes a free mutex without a system call, and to keep it from sleeping (a futex system
//! call, and a "waiters" mark that costs the holder a wake-up) on a held mutex, it is only made
//! after a look at the lock word says the mutex is not held.
//!
//! That look relies on the lock word being the `u32` at offset 0 of `pthread_mutex_t` in the
//! kernel's robust-futex format: the holder's thread id in the low 30 bits, bit 30 set when the
//! holder died, bit 31 when someone waits. The format is kernel ABI (glibc hands the word's
//! offset to the kernel with `set_robust_list`) and the field is `__data.__lock` on every glibc
//! port; a test checks it. It is only a hint: glibc decides.

use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::sync::SPIN_LIMIT;

#[cfg(not(target_env = "gnu"))]
compile_error!(
    "shmbus's RobustMutex relies on glibc's robust, process-shared pthread mutexes and \
     pthread_mutex_clocklock (glibc 2.30 or later)"
);

extern "C" {
    // glibc 2.30 and later; the libc crate does not bind it. Like `pthread_mutex_timedlock`, but
    // the absolute deadline is measured on `clockid` (we use CLOCK_MONOTONIC, which does not jump
    // when the wall clock is set). Returns 0 or an error number.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// What a successful lock found. Either way, the caller now holds the mutex.
#[must_use = "`OwnerDied` means the protected data may be inconsistent and must be repaired"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The previous holder unlocked normally.
    Clean,
    /// The previous holder died while holding the mutex (`EOWNERDEAD`). The protected data may be
    /// half-updated. Repair it, then call [`RobustMutex::make_consistent`] before
    /// [`RobustMutex::unlock`]; unlocking without doing so makes the mutex permanently unusable
    /// ([`LockError::NotRecoverable`]) for every process.
    OwnerDied,
}

/// Why [`RobustMutex::lock`] did not acquire the mutex. In every case the caller does not hold it
/// (for [`Deadlock`](Self::Deadlock): no more than it did before).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The timeout passed while another thread held the mutex.
    #[error("timed out waiting for the mutex")]
    Timeout,
    /// A holder got [`Acquired::OwnerDied`] and unlocked without
    /// [`make_consistent`](RobustMutex::make_consistent) (`ENOTRECOVERABLE`). Nobody can ever
    /// lock this mutex again; whatever it protects must be rebuilt (in practice: a new segment).
    #[error("the mutex is not recoverable: a previous holder died and nobody repaired it")]
    NotRecoverable,
    /// The calling thread already holds the mutex (`EDEADLK`): the mutex is of the error-checking
    /// type, so relocking is reported instead of hanging forever.
    #[error("the calling thread already holds the mutex")]
    Deadlock,
    /// Any other error from glibc, such as `EINVAL` for memory that does not hold an initialised
    /// mutex.
    #[error("pthread mutex error: {0}")]
    Os(#[source] io::Error),
}

/// Why [`RobustMutex::try_lock`] did not acquire the mutex. In every case the caller does not
/// hold it (for a caller that already held it: no more than it did before).
#[derive(Debug, thiserror::Error)]
pub enum TryLockError {
    /// Some thread holds the mutex. That may be the calling thread itself: `try_lock` does not
    /// tell the two apart (only [`RobustMutex::lock`] reports [`LockError::Deadlock`]).
    #[error("the mutex is held")]
    WouldBlock,
    /// As [`LockError::NotRecoverable`].
    #[error("the mutex is not recoverable: a previous holder died and nobody repaired it")]
    NotRecoverable,
    /// Any other error from glibc.
    #[error("pthread mutex error: {0}")]
    Os(#[source] io::Error),
}

/// A mutex shared by the processes that map it, which survives the death of its holder.
///
/// It is glibc's `pthread_mutex_t`, initialised by [`init`](Self::init) as process-shared
/// (`PTHREAD_PROCESS_SHARED`), robust (`PTHREAD_MUTEX_ROBUST`) and error-checking
/// (`PTHREAD_MUTEX_ERRORCHECK`). It protects nothing by itself: it is a lock word next to the data
/// it guards in the segment, with explicit [`lock`](Self::lock) and [`unlock`](Self::unlock).
///
/// # Outcomes
///
/// | call | result | caller holds the mutex | what to do |
/// |---|---|---|---|
/// | `lock`, `try_lock` | `Ok(Acquired::Clean)` | yes | use the data, then `unlock` |
/// | `lock`, `try_lock` | `Ok(Acquired::OwnerDied)` | yes | the last holder died holding it: repair the data, `make_consistent`, then `unlock` |
/// | `lock` | `Err(LockError::Timeout)` | no | someone else holds it |
/// | `try_lock` | `Err(TryLockError::WouldBlock)` | no | another thread holds it |
/// | `lock`, `try_lock` | `Err(..::NotRecoverable)` | no | a holder got `OwnerDied` and unlocked without `make_consistent`; the mutex is dead for good |
/// | `try_lock` | `Err(TryLockError::WouldBlock)` | already did | a bug: this thread locked it twice |
/// | `lock` | `Err(LockError::Deadlock)` | already did | a bug: this thread locked it twice |
/// | `lock`, `try_lock` | `Err(..::Os(_))` | no | `EINVAL` and the like: not an initialised mutex |
///
/// "Died" means the holding *thread* ended: a killed process, but also a thread of this process
/// that returned while holding the mutex. Unlocking after `OwnerDied` without `make_consistent`
/// is the only way to reach `NotRecoverable`.
///
/// # Rules
///
/// * **Initialise once, in place.** The segment creator calls [`init`](Self::init) on the zeroed
///   memory before publishing the segment. (All-zero bytes are glibc's static initialiser for a
///   *private, non-robust* mutex: an uninitialised one appears to work inside one process but
///   neither wakes other processes reliably nor reports dead holders.)
/// * **Unlock on the thread that locked.** The lock word records the holder's thread id and glibc
///   links the mutex into that thread's robust list; another thread cannot unlock it.
/// * **Keep the memory mapped and in place while holding it.** The holder's robust list points at
///   the mutex by its address in the holder's process; the kernel walks that list when the holder
///   dies. Unmapping a held mutex breaks owner-died detection for it (and for mutexes linked after
///   it), and whatever gets mapped at that address later may be written by the kernel. The mutex
///   may be mapped at different addresses in different processes: each holder only ever uses its
///   own address.
/// * **Only trusted, like-built peers.** While a thread holds the mutex, glibc keeps its list
///   links inside the mutex, in shared memory; a peer that scribbles over them can crash the
///   holder. All participants must use the same layout of `pthread_mutex_t` (same architecture and
///   pointer width, glibc) and the same PID namespace (the lock word holds a thread id).
///
/// # Layout
///
/// `#[repr(C)]`, exactly a `pthread_mutex_t`: [`SIZE`](Self::SIZE) bytes (40 on x86-64, 48 on
/// aarch64) with [`ALIGN`](Self::ALIGN) (8 on both).
///
/// # Examples
///
/// ```
/// use shmbus_core::sync::{Acquired, RobustMutex};
/// use std::time::Duration;
///
/// // On the heap here; in real use it sits inside a mapped segment.
/// // SAFETY: a `RobustMutex` is plain bytes; all-zero is the state of fresh shared memory.
/// let mut m: Box<RobustMutex> = Box::new(unsafe { std::mem::zeroed() });
/// // SAFETY: the pointer is valid, aligned and nobody else uses the mutex yet.
/// unsafe { RobustMutex::init(&mut *m) }.unwrap();
///
/// match m.lock(Some(Duration::from_secs(1))).unwrap() {
///     Acquired::Clean => {}
///     Acquired::OwnerDied => {
///         // ... repair the data the mutex protects, then:
///         // SAFETY: this thread holds the mutex and got `OwnerDied`.
///         unsafe { m.make_consistent() }.unwrap();
///     }
/// }
/// // ... use the protected data ...
/// // SAFETY: this thread locked the mutex above.
/// unsafe { m.unlock() };
/// ```
#[repr(C)]
pub struct RobustMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: a `pthread_mutex_t` is made to be used from many threads at once through a shared
// pointer (that is its purpose); every access goes through glibc's pthread functions, which
// synchronise internally. The mutex does not hand out access to any data itself.
unsafe impl Sync for RobustMutex {}

// `Send` is automatic (`UnsafeCell<T>` is `Send` when `T` is); moving an unlocked mutex between
// threads is fine. Checked here so that a change in the libc crate cannot silently remove it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<RobustMutex>();
};
const _: () = assert!(core::mem::size_of::<RobustMutex>() == RobustMutex::SIZE);
const _: () = assert!(core::mem::align_of::<RobustMutex>() == RobustMutex::ALIGN);
#[cfg(target_arch = "x86_64")]
const _: () = assert!(RobustMutex::SIZE == 40 && RobustMutex::ALIGN == 8);
#[cfg(target_arch = "aarch64")]
const _: () = assert!(RobustMutex::SIZE == 48 && RobustMutex::ALIGN == 8);

impl fmt::Debug for RobustMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The contents are glibc's business, and reading them would race with other threads.
        f.debug_struct("RobustMutex").finish_non_exhaustive()
    }
}

/// Bits of a robust futex word (kernel ABI, `linux/futex.h`): the holder's thread id...
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// ...and the mark the kernel sets when the holder dies.
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;

/// Maps the result of a blocking (or timed) pthread lock call.
fn lock_result(rc: libc::c_int) -> Result<Acquired, LockError> {
    match rc {
        0 => Ok(Acquired::Clean),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        libc::ETIMEDOUT => Err(LockError::Timeout),
        libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
        libc::EDEADLK => Err(LockError::Deadlock),
        e => Err(LockError::Os(io::Error::from_raw_os_error(e))),
    }
}

/// Turns a pthread return value (0 or an error number) into an `io::Result`.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The absolute CLOCK_MONOTONIC time `timeout` from now, or `None` if it cannot be represented
/// (then the wait is unbounded, as with [`crate::time::Deadline`]).
fn monotonic_deadline(timeout: Duration) -> Option<libc::timespec> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now = Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    );
    let at = now.checked_add(timeout)?;
    Some(libc::timespec {
        tv_sec: libc::time_t::try_from(at.as_secs()).ok()?,
        // Below 10^9, so it fits a `c_long` of any width.
        tv_nsec: at.subsec_nanos() as libc::c_long,
    })
}

impl RobustMutex {
    /// Size in bytes of a `RobustMutex` (that is, of glibc's `pthread_mutex_t`).
    pub const SIZE: usize = core::mem::size_of::<libc::pthread_mutex_t>();

    /// Alignment in bytes of a `RobustMutex`; its offset in a segment must be a multiple of it.
    pub const ALIGN: usize = core::mem::align_of::<libc::pthread_mutex_t>();

    /// Initialises the mutex in place as process-shared, robust and error-checking, unlocked.
    ///
    /// # Errors
    ///
    /// Whatever glibc reports (in practice nothing, for valid memory).
    ///
    /// # Safety
    ///
    /// `this` must be valid for writes of [`SIZE`](Self::SIZE) bytes and aligned to
    /// [`ALIGN`](Self::ALIGN), and no thread of any process may be using the mutex (locked,
    /// waiting or about to): it is overwritten. Typically `this` points into a segment that the
    /// caller has just created and not yet published.
    pub unsafe fn init(this: *mut RobustMutex) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is writable memory of the right type; init fills it in.
        check(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
        let attr = attr.as_mut_ptr();
        let result = (|| {
            // SAFETY: `attr` was initialised by pthread_mutexattr_init above and not destroyed.
            check(unsafe {
                libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED)
            })?;
            // SAFETY: as above.
            check(unsafe { libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST) })?;
            // SAFETY: as above.
            check(unsafe {
                libc::pthread_mutexattr_settype(attr, libc::PTHREAD_MUTEX_ERRORCHECK)
            })?;
            // SAFETY: the caller guarantees that `this` is valid, aligned and unused, and
            // `RobustMutex` is `repr(C)` around an `UnsafeCell<pthread_mutex_t>`, so the cast
            // pointer addresses the `pthread_mutex_t`. `attr` is initialised.
            check(unsafe { libc::pthread_mutex_init(this.cast::<libc::pthread_mutex_t>(), attr) })
        })();
        // SAFETY: `attr` is initialised and no longer needed; glibc's mutex does not keep it.
        unsafe { libc::pthread_mutexattr_destroy(attr) };
        result
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        self.inner.get()
    }

    /// The robust-futex lock word at the start of the mutex (see the module documentation).
    fn lock_word(&self) -> &AtomicU32 {
        // SAFETY: glibc's `pthread_mutex_t` starts with its `int` lock word on every port, and it
        // is at least 4 bytes long and 8-aligned (asserted above). The word lies inside the
        // `UnsafeCell`, so sharing it as an `AtomicU32` (itself an `UnsafeCell`) is allowed, and
        // glibc and the kernel only ever change it with atomic operations. The reference lives no
        // longer than `self`.
        unsafe { &*self.raw().cast::<AtomicU32>() }
    }

    /// Whether the lock word says a live thread holds the mutex (possibly the caller). A hint:
    /// the answer may be stale at once.
    fn looks_held(&self) -> bool {
        let word = self.lock_word().load(Ordering::Relaxed);
        word & FUTEX_TID_MASK != 0 && word & FUTEX_OWNER_DIED == 0
    }

    /// One attempt that does not sleep: `pthread_mutex_clocklock` with a deadline in the past.
    /// Returns glibc's result: 0, `EOWNERDEAD`, `ENOTRECOVERABLE`, `EDEADLK`, `ETIMEDOUT` (held),
    /// or another error number.
    fn lock_now(&self) -> libc::c_int {
        let past = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `self.raw()` points to a `pthread_mutex_t` that lives as long as `self` and is
        // only ever accessed through pthread functions (and atomic loads); `past` is valid.
        unsafe { pthread_mutex_clocklock(self.raw(), libc::CLOCK_MONOTONIC, &past) }
    }

    /// Locks the mutex, waiting at most `timeout` (`None`: no limit).
    ///
    /// First spins a bounded number of rounds (about a hundred, a few microseconds) watching the
    /// lock word and trying to take the mutex without sleeping whenever it looks free; then
    /// sleeps in glibc until the mutex is free or the deadline, measured on `CLOCK_MONOTONIC`,
    /// passes. See the [type's documentation](Self) for what each outcome means.
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`], [`LockError::NotRecoverable`], [`LockError::Deadlock`],
    /// [`LockError::Os`]. The caller does not hold the mutex after an error.
    pub fn lock(&self, timeout: Option<Duration>) -> Result<Acquired, LockError> {
        // Fix the deadline first, so that the spinning counts against the timeout.
        let deadline = timeout.and_then(monotonic_deadline);
        for _ in 0..SPIN_LIMIT {
            if !self.looks_held() {
                match self.lock_now() {
                    // Taken by someone else between our look and our attempt: keep spinning.
                    libc::ETIMEDOUT => {}
                    rc => return lock_result(rc),
                }
            }
            std::hint::spin_loop();
        }
        let rc = match deadline {
            // SAFETY: `self.raw()` points to a `pthread_mutex_t` that lives as long as `self` and
            // is only ever accessed through pthread functions (and atomic loads); the deadline is
            // a valid timespec.
            Some(at) => unsafe { pthread_mutex_clocklock(self.raw(), libc::CLOCK_MONOTONIC, &at) },
            // SAFETY: as above.
            None => unsafe { libc::pthread_mutex_lock(self.raw()) },
        };
        lock_result(rc)
    }

    /// Locks the mutex if no thread holds it, without waiting and, when the mutex is held,
    /// without a system call.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if a thread holds it, [`TryLockError::NotRecoverable`],
    /// [`TryLockError::Os`]. The caller does not hold the mutex after an error.
    pub fn try_lock(&self) -> Result<Acquired, TryLockError> {
        if self.looks_held() {
            return Err(TryLockError::WouldBlock);
        }
        match self.lock_now() {
            0 => Ok(Acquired::Clean),
            libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
            // ETIMEDOUT: taken between the look and the attempt. EDEADLK: held by this very thread
            // (not possible after the look, but it would block too).
            libc::ETIMEDOUT | libc::EBUSY | libc::EDEADLK => Err(TryLockError::WouldBlock),
            libc::ENOTRECOVERABLE => Err(TryLockError::NotRecoverable),
            e => Err(TryLockError::Os(io::Error::from_raw_os_error(e))),
        }
    }

    /// Unlocks the mutex.
    ///
    /// After [`Acquired::OwnerDied`] without [`make_consistent`](Self::make_consistent), this
    /// makes the mutex permanently [not recoverable](LockError::NotRecoverable).
    ///
    /// # Safety
    ///
    /// The calling thread must hold the mutex (a `lock` or `try_lock` on this thread returned
    /// `Ok` and no `unlock` has followed). glibc refuses to unlock a robust mutex held by another
    /// thread, but the data the mutex protects could already be in use by a thread that believes
    /// it holds the lock.
    pub unsafe fn unlock(&self) {
        // SAFETY: `self.raw()` points to a live `pthread_mutex_t`; the caller holds it.
        let rc = unsafe { libc::pthread_mutex_unlock(self.raw()) };
        debug_assert_eq!(
            rc, 0,
            "pthread_mutex_unlock failed: the caller did not hold the mutex"
        );
    }

    /// Marks the protected data as repaired after [`Acquired::OwnerDied`], so that the next
    /// [`unlock`](Self::unlock) leaves a normal, usable mutex.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the mutex is not in the owner-died state.
    ///
    /// # Safety
    ///
    /// The calling thread must hold the mutex, having got [`Acquired::OwnerDied`], and must have
    /// made the protected data consistent again.
    pub unsafe fn make_consistent(&self) -> io::Result<()> {
        // SAFETY: `self.raw()` points to a live `pthread_mutex_t`; the caller holds it.
        check(unsafe { libc::pthread_mutex_consistent(self.raw()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Instant;

    /// A robust mutex on the heap, initialised as the segment creator would.
    fn heap() -> Arc<RobustMutex> {
        // SAFETY: `RobustMutex` is plain bytes; all-zero is the state of fresh shared memory.
        let mut m: Arc<RobustMutex> = Arc::new(unsafe { std::mem::zeroed() });
        let this: *mut RobustMutex = Arc::get_mut(&mut m).unwrap();
        // SAFETY: `this` comes from a unique reference to a live, aligned allocation.
        unsafe { RobustMutex::init(this) }.unwrap();
        m
    }

    /// Locks on a new thread which then ends without unlocking; the mutex is left with a dead
    /// owner.
    fn abandon(m: &Arc<RobustMutex>) {
        let m = Arc::clone(m);
        thread::spawn(move || {
            assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
            // Return while holding it: glibc and the kernel treat the thread's exit like death.
        })
        .join()
        .unwrap();
    }

    #[test]
    fn lock_unlock_relock() {
        let m = heap();
        assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
        assert_eq!(m.try_lock().unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
        assert_eq!(
            m.lock(Some(Duration::from_millis(10))).unwrap(),
            Acquired::Clean
        );
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
    }

    #[test]
    fn relocking_on_the_same_thread_is_a_deadlock_error() {
        let m = heap();
        assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
        assert!(matches!(m.lock(None), Err(LockError::Deadlock)));
        assert!(matches!(
            m.lock(Some(Duration::from_millis(1))),
            Err(LockError::Deadlock)
        ));
        // `try_lock` cannot tell "held by me" from "held by another thread".
        assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
        // SAFETY: locked on this thread above (the failed relocks changed nothing).
        unsafe { m.unlock() };
        assert_eq!(m.try_lock().unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
    }

    #[test]
    fn times_out_while_another_thread_holds_it() {
        let m = heap();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                // SAFETY: locked on this thread above.
                unsafe { m.unlock() };
            })
        };
        locked_rx.recv().unwrap();

        assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
        let start = Instant::now();
        assert!(matches!(
            m.lock(Some(Duration::from_millis(50))),
            Err(LockError::Timeout)
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            m.lock(Some(Duration::ZERO)),
            Err(LockError::Timeout)
        ));

        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(
            m.lock(Some(Duration::from_secs(10))).unwrap(),
            Acquired::Clean
        );
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
    }

    #[test]
    fn a_waiter_gets_the_mutex_when_the_holder_unlocks() {
        let m = heap();
        assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
        let got_it = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (m, got_it) = (Arc::clone(&m), Arc::clone(&got_it));
            thread::spawn(move || {
                let r = m.lock(Some(Duration::from_secs(10))).unwrap();
                got_it.store(true, Ordering::SeqCst);
                // SAFETY: locked on this thread just above.
                unsafe { m.unlock() };
                r
            })
        };
        thread::sleep(Duration::from_millis(30));
        assert!(
            !got_it.load(Ordering::SeqCst),
            "the waiter got a held mutex"
        );
        // SAFETY: locked on this thread above.
        unsafe { m.unlock() };
        assert_eq!(waiter.join().unwrap(), Acquired::Clean);
        assert!(got_it.load(Ordering::SeqCst));
    }

    #[test]
    fn excludes_mutually() {
        /// A counter updated non-atomically in two steps, under the mutex only.
        struct Guarded {
            mutex: RobustMutex,
            value: UnsafeCell<u64>,
        }
        // SAFETY: `value` is only touched while `mutex` is held.
        unsafe impl Sync for Guarded {}

        const THREADS: u64 = 4;
        const ROUNDS: u64 = 2_000;
        let mut g = Arc::new(Guarded {
            // SAFETY: all-zero bytes, initialised in place below before any use.
            mutex: unsafe { std::mem::zeroed() },
            value: UnsafeCell::new(0),
        });
        let this: *mut RobustMutex = &mut Arc::get_mut(&mut g).unwrap().mutex;
        // SAFETY: `this` comes from a unique reference to a live, aligned allocation.
        unsafe { RobustMutex::init(this) }.unwrap();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let g = Arc::clone(&g);
                thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        assert_eq!(g.mutex.lock(None).unwrap(), Acquired::Clean);
                        // SAFETY: we hold the mutex, so nobody else touches `value`.
                        unsafe {
                            let v = std::ptr::read_volatile(g.value.get());
                            thread::yield_now();
                            std::ptr::write_volatile(g.value.get(), v + 1);
                        }
                        // SAFETY: locked on this thread above.
                        unsafe { g.mutex.unlock() };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: every thread has been joined; nobody else touches `value`.
        assert_eq!(unsafe { *g.value.get() }, THREADS * ROUNDS);
    }

    #[test]
    fn a_holder_thread_that_exits_leaves_owner_died() {
        let m = heap();
        abandon(&m);
        assert_eq!(
            m.lock(Some(Duration::from_secs(10))).unwrap(),
            Acquired::OwnerDied
        );
        // SAFETY: this thread holds it after `OwnerDied`; there is no data to repair.
        unsafe { m.make_consistent() }.unwrap();
        // SAFETY: locked on this thread above.
        unsafe { m.unlock() };
        // Repaired: back to normal.
        assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
    }

    #[test]
    fn try_lock_also_reports_owner_died() {
        let m = heap();
        abandon(&m);
        assert_eq!(m.try_lock().unwrap(), Acquired::OwnerDied);
        // SAFETY: this thread holds it after `OwnerDied`; there is no data to repair.
        unsafe { m.make_consistent() }.unwrap();
        // SAFETY: locked on this thread above.
        unsafe { m.unlock() };
        assert_eq!(m.try_lock().unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock() };
    }

    #[test]
    fn a_sleeping_waiter_is_woken_by_the_holders_death() {
        let m = heap();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let holder = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
                locked_tx.send(()).unwrap();
                exit_rx.recv().unwrap();
            })
        };
        locked_rx.recv().unwrap();
        let waiter = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                let r = m.lock(Some(Duration::from_secs(10)));
                if r.is_ok() {
                    // SAFETY: this thread holds it; no data to repair.
                    unsafe { m.make_consistent() }.ok();
                    // SAFETY: locked on this thread above.
                    unsafe { m.unlock() };
                }
                r.map_err(|e| e.to_string())
            })
        };
        thread::sleep(Duration::from_millis(30)); // let the waiter fall asleep in glibc
        exit_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(Acquired::OwnerDied));
    }

    #[test]
    fn unlocking_without_make_consistent_is_not_recoverable() {
        let m = heap();
        abandon(&m);
        assert_eq!(m.lock(None).unwrap(), Acquired::OwnerDied);
        // SAFETY: locked on this thread above; deliberately not made consistent.
        unsafe { m.unlock() };
        // Every way in, repeatedly, from this thread and from another: glibc's trylock would
        // leave the mutex locked by the first caller here and the later calls would block or
        // report a deadlock.
        for _ in 0..2 {
            assert!(matches!(m.try_lock(), Err(TryLockError::NotRecoverable)));
            assert!(matches!(m.lock(None), Err(LockError::NotRecoverable)));
            assert!(matches!(
                m.lock(Some(Duration::from_millis(1))),
                Err(LockError::NotRecoverable)
            ));
        }
        let other = Arc::clone(&m);
        let (try_lock, lock) = thread::spawn(move || {
            let t = other.try_lock().map_err(|e| e.to_string());
            let l = other
                .lock(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string());
            (t, l)
        })
        .join()
        .unwrap();
        assert_eq!(try_lock, Err(TryLockError::NotRecoverable.to_string()));
        assert_eq!(lock, Err(LockError::NotRecoverable.to_string()));
        assert_eq!(m.lock_word().load(Ordering::SeqCst), 0, "left locked");
    }

    #[test]
    fn the_lock_word_is_where_and_what_we_expect() {
        let m = heap();
        assert_eq!(m.lock_word().load(Ordering::SeqCst), 0);
        assert!(!m.looks_held());
        assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        assert_eq!(m.lock_word().load(Ordering::SeqCst) & FUTEX_TID_MASK, tid);
        assert!(m.looks_held());
        // SAFETY: locked on this thread above.
        unsafe { m.unlock() };
        assert_eq!(m.lock_word().load(Ordering::SeqCst), 0);
        abandon(&m);
        assert_ne!(m.lock_word().load(Ordering::SeqCst) & FUTEX_OWNER_DIED, 0);
        assert!(!m.looks_held());
    }

    #[test]
    fn make_consistent_refuses_a_clean_mutex() {
        let m = heap();
        assert_eq!(m.lock(None).unwrap(), Acquired::Clean);
        // SAFETY: this thread holds it (not after `OwnerDied`, which glibc must report).
        assert!(unsafe { m.make_consistent() }.is_err());
        // SAFETY: locked on this thread above.
        unsafe { m.unlock() };
    }

    #[test]
    fn deadline_is_far_for_huge_timeouts() {
        assert!(monotonic_deadline(Duration::MAX).is_none());
        let d = monotonic_deadline(Duration::from_secs(5)).unwrap();
        assert!(d.tv_sec >= 5 && (0..1_000_000_000).contains(&d.tv_nsec));
    }
}

//! A process-shared robust mutex: a futex word that names its holder, and liveness leases that
//! tell when that holder died.
//!
//! # Why not glibc's `pthread_mutex_t`
//!
//! A robust pthread mutex keeps glibc's own bookkeeping inside the shared memory: the mutex kind,
//! and the pointers of the holder thread's robust list, which glibc follows when it unlocks and
//! which the kernel follows when the thread dies. Any process that can write the segment can
//! change them, and then glibc dereferences a pointer it was handed (`SIGSEGV` in the holder's
//! unlock) or trips an assertion on a kind it did not expect (`SIGABRT`): the hostile-writer tests
//! found both. Nothing in this mutex is ever followed as a pointer, so a writer can only make it
//! report wrong things (held, free, owner died), never crash or hang a process.
//!
//! # The protocol
//!
//! The word holds the holder's **id** (bits 0..=30; 0: free) and a *waiters* bit (31). An id
//! names a participant that holds a liveness lease for as long as it may lock the mutex (a
//! named mutex's handle row, a topic's publisher row: see [`Holders`]); the kernel drops the
//! lease when the process dies, however it dies. So:
//!
//! - **lock**: CAS `0 → me` (with the waiters bit kept); then read `state`.
//! - **wait**: spin briefly, then set the waiters bit and sleep on the word (futex), in slices,
//!   checking after each slice whether the holder is still alive.
//! - **a dead holder** (its lease is free, or it is this handle and the recorded thread no longer
//!   exists): CAS `dead id → me`, mark the state *inconsistent* and report
//!   [`Acquired::OwnerDied`]. The new holder repairs what the mutex guards and calls
//!   [`make_consistent`](RobustMutex::make_consistent); unlocking without it makes the mutex
//!   [not recoverable](LockError::NotRecoverable) for good, as with POSIX robust mutexes.
//! - **unlock**: CAS `me → 0`, and a futex wake if the waiters bit was set.
//!
//! A live holder always holds its lease while the word names it (the lease is taken before the
//! first lock and kept until the handle is dropped), so a takeover never happens under a live
//! holder.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::primitive::{spin_loop, AtomicU32, Ordering};
use crate::time::Deadline;

/// Spins before a locker sleeps (none under loom, which models the sleep as a yield).
const SPIN_LIMIT: u32 = if cfg!(loom) {
    0
} else {
    crate::sync::SPIN_LIMIT
};

/// Bits of the lock word that hold the holder's id.
const ID_MASK: u32 = (1 << 31) - 1;
/// Set while a locker sleeps on the word (the unlocker then wakes one).
const WAITERS: u32 = 1 << 31;

/// `state` values.
const CONSISTENT: u32 = 0;
const INCONSISTENT: u32 = 1;
const NOT_RECOVERABLE: u32 = 2;

/// How long one sleep of a waiter lasts before it checks on the holder.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// Who may hold a [`RobustMutex`], and whether they are alive.
pub trait Holders {
    /// The caller's holder id: non-zero, at most `2^31 - 1`, unique among the live users of the
    /// mutex, and alive (its lease held) for as long as the caller may hold the mutex.
    fn me(&self) -> u32;
    /// Whether holder `id` is alive (`true` when in doubt). Called only while the mutex is
    /// contended, at most once per sleep slice.
    fn is_alive(&self, id: u32) -> bool;
}

/// What a successful lock found. Either way, the caller now holds the mutex.
#[must_use = "`OwnerDied` means the protected data may be inconsistent and must be repaired"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The previous holder unlocked normally.
    Clean,
    /// The previous holder died while holding the mutex. The protected data may be
    /// half-updated. Repair it, then call [`RobustMutex::make_consistent`] before
    /// [`RobustMutex::unlock`]; unlocking without doing so makes the mutex permanently unusable
    /// ([`LockError::NotRecoverable`]) for every process.
    OwnerDied,
}

/// Why [`RobustMutex::lock`] did not acquire the mutex. In every case the caller does not hold it
/// (for [`Deadlock`](Self::Deadlock): no more than it did before).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The timeout passed while another holder held the mutex.
    #[error("timed out waiting for the mutex")]
    Timeout,
    /// A holder got [`Acquired::OwnerDied`] and unlocked without
    /// [`make_consistent`](RobustMutex::make_consistent). Nobody can ever lock this mutex again;
    /// whatever it protects must be rebuilt (in practice: a new segment).
    #[error("the mutex is not recoverable: a previous holder died and nobody repaired it")]
    NotRecoverable,
    /// The calling thread already holds the mutex (through the same holder id): relocking is
    /// reported instead of hanging forever.
    #[error("the calling thread already holds the mutex")]
    Deadlock,
    /// The caller could not take part (no holder id could be had, for example).
    #[error("the mutex could not be used: {0}")]
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
    /// As [`LockError::Os`].
    #[error("the mutex could not be used: {0}")]
    Os(#[source] io::Error),
}

/// A mutex shared by the processes that map it, which survives the death of its holder.
///
/// It protects nothing by itself: it is a lock word next to the data it guards in the segment,
/// with explicit [`lock`](Self::lock) and [`unlock`](Self::unlock). Every call names the caller
/// through a [`Holders`] (see the module docs for the protocol).
///
/// # Outcomes
///
/// | call | result | caller holds the mutex | what to do |
/// |---|---|---|---|
/// | `lock`, `try_lock` | `Ok(Acquired::Clean)` | yes | use the data, then `unlock` |
/// | `lock`, `try_lock` | `Ok(Acquired::OwnerDied)` | yes | the last holder died holding it: repair the data, `make_consistent`, then `unlock` |
/// | `lock` | `Err(LockError::Timeout)` | no | someone else holds it |
/// | `try_lock` | `Err(TryLockError::WouldBlock)` | no | another holder holds it |
/// | `lock`, `try_lock` | `Err(..::NotRecoverable)` | no | a holder got `OwnerDied` and unlocked without `make_consistent`; the mutex is dead for good |
/// | `lock` | `Err(LockError::Deadlock)` | already did | a bug: this thread locked it twice |
///
/// # Examples
///
/// ```
/// use shmbus_core::sync::{Acquired, Holders, RobustMutex};
///
/// struct Me;
/// impl Holders for Me {
///     fn me(&self) -> u32 { 1 }
///     fn is_alive(&self, _: u32) -> bool { true }
/// }
///
/// // In a segment, the creator initialises it in place; here, on the stack.
/// let mut m = std::mem::MaybeUninit::<RobustMutex>::uninit();
/// // SAFETY: fresh, aligned, exclusive memory.
/// unsafe { RobustMutex::init(m.as_mut_ptr()) }?;
/// // SAFETY: initialised just above.
/// let m = unsafe { m.assume_init_ref() };
/// assert_eq!(m.lock(&Me, None)?, Acquired::Clean);
/// // SAFETY: locked just above by this thread, as holder 1.
/// unsafe { m.unlock(&Me) };
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C, align(8))]
pub struct RobustMutex {
    /// Holder id (bits 0..=30) and the waiters bit (31); 0: free.
    word: AtomicU32,
    /// CONSISTENT, INCONSISTENT (a holder died; not repaired yet) or NOT_RECOVERABLE.
    state: AtomicU32,
    /// The holding thread's id (as the kernel knows it), written by the holder after locking:
    /// tells a relock on the same thread (a deadlock) from another thread of the same holder,
    /// and lets a holder's other threads see that the holding thread has ended.
    tid: AtomicU32,
    _reserved: AtomicU32,
}

// SAFETY: every field is an atomic; the type is meant to be shared, across processes too.
unsafe impl Sync for RobustMutex {}

impl fmt::Debug for RobustMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Relaxed);
        f.debug_struct("RobustMutex")
            .field("holder", &(w & ID_MASK))
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Sleeps on `word` while it holds `expected`, at most `slice`.
#[cfg(not(loom))]
fn sleep_on(word: &AtomicU32, expected: u32, slice: Duration) {
    crate::futex::wait(word, expected, Some(slice));
}

/// Under loom a timed futex wait may return at any moment: modelled as a yield.
#[cfg(loom)]
fn sleep_on(_word: &AtomicU32, _expected: u32, _slice: Duration) {
    loom::thread::yield_now();
}

/// Wakes one sleeper on `word`.
#[cfg(not(loom))]
fn wake_one(word: &AtomicU32) {
    crate::futex::wake(word, 1);
}

/// Under loom sleepers only yield: nothing to wake.
#[cfg(loom)]
fn wake_one(_word: &AtomicU32) {}

/// The calling thread's id, as the kernel knows it: asked once per thread and process
/// generation (every lock hold needs it; a system call each time was a measurable share of a
/// small work-queue item). A forked child's thread has another id than the parent's thread it
/// continues, so the cached one is only used in the generation that asked for it.
#[cfg(not(loom))]
fn current_tid() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static TID: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
    }
    let generation = crate::fork::generation();
    TID.with(|cached| match cached.get() {
        Some((g, tid)) if g == generation => tid,
        _ => {
            let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
            cached.set(Some((generation, tid)));
            tid
        }
    })
}

/// Under loom: a distinct id per model thread.
#[cfg(loom)]
fn current_tid() -> u32 {
    loom::thread_local! {
        static TID: u32 = NEXT_TID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    static NEXT_TID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    TID.with(|t| *t)
}

/// Whether a thread `tid` of this process may still exist (`true` when in doubt).
#[cfg(loom)]
fn thread_may_be_alive(_tid: u32) -> bool {
    true
}

/// Whether a thread `tid` of this process may still exist (`true` when in doubt).
#[cfg(not(loom))]
fn thread_may_be_alive(tid: u32) -> bool {
    let (Ok(tid), Ok(pid)) = (
        libc::pid_t::try_from(tid),
        libc::pid_t::try_from(std::process::id()),
    ) else {
        return true;
    };
    // SAFETY: `tgkill` with signal 0 sends nothing; it only reports whether the thread exists.
    // Every argument is a plain integer.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// What one look at a held mutex found.
enum Held {
    /// By a live holder (another one, or another thread of this one).
    Alive,
    /// By this very thread.
    ByMe,
    /// By a holder that died.
    Dead,
}

impl RobustMutex {
    /// Bytes a mutex occupies.
    pub const SIZE: usize = size_of::<RobustMutex>();
    /// Its alignment.
    pub const ALIGN: usize = align_of::<RobustMutex>();

    /// Initialises a free, consistent mutex at `this`.
    ///
    /// # Safety
    ///
    /// `this` is valid for writes of [`RobustMutex::SIZE`] bytes, aligned to
    /// [`RobustMutex::ALIGN`], and nobody else uses the memory during the call.
    pub unsafe fn init(this: *mut RobustMutex) -> io::Result<()> {
        // SAFETY: the caller guarantees valid, aligned, exclusive memory.
        unsafe {
            this.write(RobustMutex {
                word: AtomicU32::new(0),
                state: AtomicU32::new(CONSISTENT),
                tid: AtomicU32::new(0),
                _reserved: AtomicU32::new(0),
            })
        };
        Ok(())
    }

    fn look(&self, word: u32, h: &dyn Holders) -> Held {
        let holder = word & ID_MASK;
        if holder != h.me() {
            return if !h.is_alive(holder) {
                Held::Dead
            } else if self.tid.load(Ordering::Relaxed) == current_tid() {
                // Thread ids are unique on the machine: this thread holds it, through another
                // handle.
                Held::ByMe
            } else {
                Held::Alive
            };
        }
        // Held through our own id: by this thread, another live thread, or one that ended
        // (0 is a holder between its CAS and its tid store: alive).
        match self.tid.load(Ordering::Relaxed) {
            t if t == current_tid() => Held::ByMe,
            0 => Held::Alive,
            t if thread_may_be_alive(t) => Held::Alive,
            _ => Held::Dead,
        }
    }

    /// After the word names the caller: record the thread, and read what the last holder left.
    fn entered(&self, h: &dyn Holders, took_over: bool) -> Result<Acquired, bool> {
        self.tid.store(current_tid(), Ordering::Relaxed);
        let state = if took_over {
            // The dead holder may have been half-way through an update.
            self.state
                .compare_exchange(
                    CONSISTENT,
                    INCONSISTENT,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .map_or_else(|s| s, |_| INCONSISTENT)
        } else {
            self.state.load(Ordering::Acquire)
        };
        match state {
            CONSISTENT => Ok(Acquired::Clean),
            NOT_RECOVERABLE => {
                self.release(h);
                Err(false)
            }
            // INCONSISTENT, or anything another process wrote: repair before use.
            _ => Ok(Acquired::OwnerDied),
        }
    }

    /// One attempt: `Ok` holding it, `Err(word)` with the word that kept us out.
    fn attempt(&self, h: &dyn Holders, word: u32) -> Result<bool, u32> {
        let me = h.me() & ID_MASK;
        match self.word.compare_exchange(
            word,
            me | (word & WAITERS),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(word & ID_MASK != 0),
            Err(now) => Err(now),
        }
    }

    /// Locks the mutex, waiting at most `timeout` (`None`: no limit; a dead holder never makes
    /// this hang: a waiter checks on the holder every 20 ms).
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`], [`LockError::NotRecoverable`], [`LockError::Deadlock`].
    pub fn lock(&self, h: &dyn Holders, timeout: Option<Duration>) -> Result<Acquired, LockError> {
        let deadline = Deadline::after(timeout);
        let mut word = self.word.load(Ordering::Relaxed);
        let mut spins = 0;
        loop {
            let free = word & ID_MASK == 0;
            if !free {
                match self.look(word, h) {
                    Held::ByMe => return Err(LockError::Deadlock),
                    Held::Dead => {}
                    #[allow(clippy::absurd_extreme_comparisons)] // SPIN_LIMIT is 0 under loom
                    Held::Alive if spins < SPIN_LIMIT => {
                        spins += 1;
                        spin_loop();
                        word = self.word.load(Ordering::Relaxed);
                        continue;
                    }
                    Held::Alive => {
                        if deadline.expired() {
                            return Err(LockError::Timeout);
                        }
                        // Announce ourselves, then sleep while the word is unchanged.
                        let marked = word | WAITERS;
                        if word & WAITERS == 0 {
                            if let Err(now) = self.word.compare_exchange(
                                word,
                                marked,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            ) {
                                word = now;
                                continue;
                            }
                        }
                        let slice = deadline
                            .remaining()
                            .map_or(CHECK_EVERY, |r| r.min(CHECK_EVERY));
                        sleep_on(&self.word, marked, slice);
                        word = self.word.load(Ordering::Relaxed);
                        continue;
                    }
                }
            }
            match self.attempt(h, word) {
                Ok(took_over) => {
                    if took_over {
                        tracing::warn!(
                            holder = word & ID_MASK,
                            "took over a mutex whose holder died"
                        );
                    }
                    return self
                        .entered(h, took_over)
                        .map_err(|_| LockError::NotRecoverable);
                }
                Err(now) => word = now,
            }
        }
    }

    /// Locks the mutex if it is free or its holder is dead, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if a live holder (this thread included) holds it,
    /// [`TryLockError::NotRecoverable`].
    pub fn try_lock(&self, h: &dyn Holders) -> Result<Acquired, TryLockError> {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & ID_MASK != 0 && !matches!(self.look(word, h), Held::Dead) {
                return Err(TryLockError::WouldBlock);
            }
            match self.attempt(h, word) {
                Ok(took_over) => {
                    return self
                        .entered(h, took_over)
                        .map_err(|_| TryLockError::NotRecoverable)
                }
                Err(now) => word = now,
            }
        }
    }

    /// Clears the word if it names the caller, and wakes a waiter if one sleeps.
    fn release(&self, h: &dyn Holders) {
        let me = h.me() & ID_MASK;
        self.tid.store(0, Ordering::Relaxed);
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & ID_MASK != me {
                // Not ours (only another process's write can do that): leave it to the waiters'
                // liveness checks.
                return;
            }
            match self
                .word
                .compare_exchange(word, 0, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        if word & WAITERS != 0 {
            wake_one(&self.word);
        }
    }

    /// Unlocks the mutex. If it was acquired with [`Acquired::OwnerDied`] and
    /// [`make_consistent`](Self::make_consistent) was not called, it becomes not recoverable.
    ///
    /// # Safety
    ///
    /// The calling thread holds the mutex as `h.me()` (a successful `lock`/`try_lock` on this
    /// thread, not unlocked since).
    pub unsafe fn unlock(&self, h: &dyn Holders) {
        let _ = self.state.compare_exchange(
            INCONSISTENT,
            NOT_RECOVERABLE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.release(h);
    }

    /// Marks the protected data repaired after [`Acquired::OwnerDied`], so that unlocking leaves a
    /// normal, usable mutex.
    ///
    /// # Errors
    ///
    /// An `InvalidInput` error if the mutex was not in the owner-died state.
    ///
    /// # Safety
    ///
    /// The calling thread holds the mutex, acquired with [`Acquired::OwnerDied`], and has
    /// repaired the data.
    pub unsafe fn make_consistent(&self) -> io::Result<()> {
        match self.state.compare_exchange(
            INCONSISTENT,
            CONSISTENT,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the mutex is not in the owner-died state",
            )),
        }
    }

    /// Whether some holder holds the mutex now (a snapshot, for tools and tests).
    pub fn is_held(&self) -> bool {
        self.word.load(Ordering::Relaxed) & ID_MASK != 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::UnsafeCell;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    /// Holders for tests: ids `1..`, with a switch saying whether holder 2 is alive.
    struct Ids {
        me: u32,
        two_alive: Arc<AtomicBool>,
    }

    impl Holders for Ids {
        fn me(&self) -> u32 {
            self.me
        }
        fn is_alive(&self, id: u32) -> bool {
            id != 2 || self.two_alive.load(Ordering::SeqCst)
        }
    }

    fn one() -> Ids {
        Ids {
            me: 1,
            two_alive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// A robust mutex on the heap, initialised as the segment creator would.
    fn heap() -> Arc<RobustMutex> {
        let mut m = Arc::new(RobustMutex {
            word: AtomicU32::new(7),
            state: AtomicU32::new(7),
            tid: AtomicU32::new(7),
            _reserved: AtomicU32::new(7),
        });
        let this: *mut RobustMutex = Arc::get_mut(&mut m).unwrap();
        // SAFETY: `this` comes from a unique reference to a live, aligned allocation.
        unsafe { RobustMutex::init(this) }.unwrap();
        m
    }

    /// Locks on a new thread (holder 1) which then ends without unlocking.
    fn abandon(m: &Arc<RobustMutex>) {
        let m = Arc::clone(m);
        thread::spawn(move || {
            assert_eq!(m.lock(&one(), None).unwrap(), Acquired::Clean);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn lock_unlock_relock() {
        let (m, h) = (heap(), one());
        assert_eq!(m.lock(&h, None).unwrap(), Acquired::Clean);
        assert!(m.is_held());
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock(&h) };
        assert!(!m.is_held());
        assert_eq!(m.try_lock(&h).unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock(&h) };
    }

    #[test]
    fn relocking_on_the_same_thread_is_a_deadlock_error() {
        let (m, h) = (heap(), one());
        assert_eq!(m.lock(&h, None).unwrap(), Acquired::Clean);
        assert!(matches!(m.lock(&h, None), Err(LockError::Deadlock)));
        assert!(matches!(m.try_lock(&h), Err(TryLockError::WouldBlock)));
        // SAFETY: locked on this thread above (the failed relocks changed nothing).
        unsafe { m.unlock(&h) };
        assert_eq!(m.try_lock(&h).unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock(&h) };
    }

    #[test]
    fn times_out_while_another_holder_holds_it_and_gets_it_on_unlock() {
        let m = heap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                let two = Ids {
                    me: 2,
                    two_alive: Arc::new(AtomicBool::new(true)),
                };
                assert_eq!(m.lock(&two, None).unwrap(), Acquired::Clean);
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                // SAFETY: locked on this thread as holder 2 above.
                unsafe { m.unlock(&two) };
            })
        };
        locked_rx.recv().unwrap();
        let h = one();
        assert!(matches!(m.try_lock(&h), Err(TryLockError::WouldBlock)));
        let start = Instant::now();
        assert!(matches!(
            m.lock(&h, Some(Duration::from_millis(50))),
            Err(LockError::Timeout)
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let waiter = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                let h = one();
                let r = m.lock(&h, Some(Duration::from_secs(10))).unwrap();
                // SAFETY: locked on this thread just above.
                unsafe { m.unlock(&h) };
                r
            })
        };
        thread::sleep(Duration::from_millis(30));
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(waiter.join().unwrap(), Acquired::Clean);
    }

    #[test]
    fn a_thread_holding_it_through_another_handle_gets_deadlock() {
        let m = heap();
        let two = Ids {
            me: 2,
            two_alive: Arc::new(AtomicBool::new(true)),
        };
        assert_eq!(m.lock(&two, None).unwrap(), Acquired::Clean);
        assert!(matches!(
            m.lock(&one(), Some(Duration::from_millis(5))),
            Err(LockError::Deadlock)
        ));
        // SAFETY: locked on this thread as holder 2 above.
        unsafe { m.unlock(&two) };
    }

    #[test]
    fn excludes_mutually() {
        struct Guarded {
            mutex: RobustMutex,
            value: UnsafeCell<u64>,
        }
        // SAFETY: `value` is only touched while `mutex` is held.
        unsafe impl Sync for Guarded {}
        const THREADS: u32 = 4;
        const ROUNDS: u64 = 2_000;
        let g = Arc::new(Guarded {
            mutex: RobustMutex {
                word: AtomicU32::new(0),
                state: AtomicU32::new(0),
                tid: AtomicU32::new(0),
                _reserved: AtomicU32::new(0),
            },
            value: UnsafeCell::new(0),
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let g = Arc::clone(&g);
                thread::spawn(move || {
                    // Half the threads share holder id 1 (one handle used by several threads),
                    // the others have ids of their own.
                    let h = Ids {
                        me: if i % 2 == 0 { 1 } else { 10 + i },
                        two_alive: Arc::new(AtomicBool::new(true)),
                    };
                    for _ in 0..ROUNDS {
                        assert_eq!(g.mutex.lock(&h, None).unwrap(), Acquired::Clean);
                        // SAFETY: we hold the mutex, so nobody else touches `value`.
                        unsafe {
                            let v = std::ptr::read_volatile(g.value.get());
                            thread::yield_now();
                            std::ptr::write_volatile(g.value.get(), v + 1);
                        }
                        // SAFETY: locked on this thread above.
                        unsafe { g.mutex.unlock(&h) };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: every thread has been joined.
        assert_eq!(unsafe { *g.value.get() }, u64::from(THREADS) * ROUNDS);
    }

    #[test]
    fn a_holder_thread_that_exits_leaves_owner_died() {
        let (m, h) = (heap(), one());
        abandon(&m);
        assert_eq!(
            m.lock(&h, Some(Duration::from_secs(10))).unwrap(),
            Acquired::OwnerDied
        );
        // SAFETY: this thread holds it after `OwnerDied`; there is no data to repair.
        unsafe { m.make_consistent() }.unwrap();
        // SAFETY: locked on this thread above.
        unsafe { m.unlock(&h) };
        assert_eq!(m.lock(&h, None).unwrap(), Acquired::Clean);
        // SAFETY: locked on this thread just above.
        unsafe { m.unlock(&h) };
    }

    #[test]
    fn a_sleeping_waiter_takes_over_from_a_holder_that_died() {
        let m = heap();
        let two_alive = Arc::new(AtomicBool::new(true));
        let two = Ids {
            me: 2,
            two_alive: Arc::clone(&two_alive),
        };
        assert_eq!(m.lock(&two, None).unwrap(), Acquired::Clean);
        let waiter = {
            let m = Arc::clone(&m);
            let two_alive = Arc::clone(&two_alive);
            thread::spawn(move || {
                let h = Ids { me: 1, two_alive };
                let r = m.lock(&h, Some(Duration::from_secs(10)));
                if r.is_ok() {
                    // SAFETY: this thread holds it; no data to repair.
                    let _ = unsafe { m.make_consistent() };
                    // SAFETY: locked on this thread above.
                    unsafe { m.unlock(&h) };
                }
                r.map_err(|e| e.to_string())
            })
        };
        thread::sleep(Duration::from_millis(30)); // let the waiter fall asleep
        two_alive.store(false, Ordering::SeqCst); // holder 2's process "dies"
        assert_eq!(waiter.join().unwrap(), Ok(Acquired::OwnerDied));
        assert!(!m.is_held());
    }

    #[test]
    fn try_lock_also_takes_over_a_dead_holder() {
        let (m, h) = (heap(), one());
        abandon(&m);
        assert_eq!(m.try_lock(&h).unwrap(), Acquired::OwnerDied);
        // SAFETY: this thread holds it after `OwnerDied`.
        unsafe { m.make_consistent() }.unwrap();
        // SAFETY: locked on this thread above.
        unsafe { m.unlock(&h) };
    }

    #[test]
    fn unlocking_without_make_consistent_is_not_recoverable() {
        let (m, h) = (heap(), one());
        abandon(&m);
        assert_eq!(m.lock(&h, None).unwrap(), Acquired::OwnerDied);
        // SAFETY: locked on this thread above; deliberately not made consistent.
        unsafe { m.unlock(&h) };
        for _ in 0..2 {
            assert!(matches!(m.try_lock(&h), Err(TryLockError::NotRecoverable)));
            assert!(matches!(m.lock(&h, None), Err(LockError::NotRecoverable)));
        }
        assert!(!m.is_held(), "left locked");
    }

    #[test]
    fn make_consistent_refuses_a_clean_mutex() {
        let (m, h) = (heap(), one());
        assert_eq!(m.lock(&h, None).unwrap(), Acquired::Clean);
        // SAFETY: this thread holds it (not after `OwnerDied`).
        assert!(unsafe { m.make_consistent() }.is_err());
        // SAFETY: locked on this thread above.
        unsafe { m.unlock(&h) };
    }

    #[test]
    fn garbage_in_every_word_never_hangs_or_crashes() {
        let h = one();
        let values = [
            0,
            1,
            2,
            3,
            ID_MASK,
            WAITERS,
            WAITERS | 1,
            WAITERS | 2,
            u32::MAX,
            7,
        ];
        for &w in &values {
            for &s in &[0, 1, 2, 3, u32::MAX] {
                for &t in &[0, 1, u32::MAX, current_tid()] {
                    let m = RobustMutex {
                        word: AtomicU32::new(w),
                        state: AtomicU32::new(s),
                        tid: AtomicU32::new(t),
                        _reserved: AtomicU32::new(0),
                    };
                    if m.lock(&h, Some(Duration::from_millis(30))).is_ok() {
                        // SAFETY: locked on this thread just above.
                        unsafe { m.unlock(&h) };
                    }
                    if m.try_lock(&h).is_ok() {
                        // SAFETY: locked on this thread just above.
                        unsafe { m.unlock(&h) };
                    }
                }
            }
        }
    }
}

/// Loom models of the takeover protocol: holders that die while holding, waiters racing to take
/// over, mutual exclusion throughout.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// Ids 1..=3; holder `i` is alive while `alive[i - 1]`.
    struct World {
        mutex: RobustMutex,
        alive: [AtomicBool; 3],
        /// Guarded by the mutex: loom reports two holders as a data race on it.
        data: UnsafeCell<u32>,
    }

    // SAFETY: `data` is only touched while `mutex` is held (which the model checks).
    unsafe impl Sync for World {}

    struct As<'a>(&'a World, u32);

    impl Holders for As<'_> {
        fn me(&self) -> u32 {
            self.1
        }
        fn is_alive(&self, id: u32) -> bool {
            match id {
                1..=3 => self.0.alive[id as usize - 1].load(Ordering::SeqCst),
                _ => false,
            }
        }
    }

    fn world() -> Arc<World> {
        Arc::new(World {
            mutex: RobustMutex {
                word: AtomicU32::new(0),
                state: AtomicU32::new(CONSISTENT),
                tid: AtomicU32::new(0),
                _reserved: AtomicU32::new(0),
            },
            alive: [
                AtomicBool::new(true),
                AtomicBool::new(true),
                AtomicBool::new(true),
            ],
            data: UnsafeCell::new(0),
        })
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        // Waiters poll (a yield per sleep slice) until the holder is seen dead or gone.
        b.max_branches = 100_000;
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(2);
        }
        b.check(f);
    }

    /// Holder 1 died holding the mutex; holders 2 and 3 race to take it over. They never hold it
    /// at the same time (loom would report the race on `data`), each gets it once, and exactly
    /// one is told that the owner died: the first.
    #[test]
    fn a_dead_holder_is_taken_over_exactly_once() {
        model(|| {
            let w = world();
            assert_eq!(w.mutex.lock(&As(&w, 1), None).unwrap(), Acquired::Clean);
            w.alive[0].store(false, Ordering::SeqCst); // dies without unlocking
            let waiters: Vec<_> = [2u32, 3]
                .into_iter()
                .map(|id| {
                    let w = Arc::clone(&w);
                    thread::spawn(move || {
                        let h = As(&w, id);
                        let acquired = w.mutex.lock(&h, None).expect("a lock without timeout");
                        // SAFETY: holding the mutex.
                        let before = w.data.with_mut(|d| unsafe {
                            let before = *d;
                            *d += 1;
                            before
                        });
                        assert_eq!(acquired == Acquired::OwnerDied, before == 0, "{acquired:?}");
                        if acquired == Acquired::OwnerDied {
                            // SAFETY: holding it after OwnerDied; the repair is the write above.
                            unsafe { w.mutex.make_consistent() }.expect("owner-died state");
                        }
                        // SAFETY: locked on this thread as `id` above.
                        unsafe { w.mutex.unlock(&h) };
                    })
                })
                .collect();
            for t in waiters {
                t.join().unwrap();
            }
            // SAFETY: every thread has been joined.
            let total = w.data.with(|d| unsafe { *d });
            assert_eq!(total, 2, "each waiter held it once");
            assert_eq!(w.mutex.state.load(Ordering::SeqCst), CONSISTENT);
            assert!(!w.mutex.is_held());
        });
    }

    /// A live holder is never taken over: a waiter gets the mutex only after the unlock, clean.
    #[test]
    fn a_live_holder_is_never_taken_over() {
        model(|| {
            let w = world();
            let holder = {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    let h = As(&w, 1);
                    assert_eq!(w.mutex.lock(&h, None).unwrap(), Acquired::Clean);
                    // SAFETY: holding the mutex.
                    w.data.with_mut(|d| unsafe { *d += 1 });
                    // SAFETY: locked on this thread as 1 above.
                    unsafe { w.mutex.unlock(&h) };
                })
            };
            let h = As(&w, 2);
            assert_eq!(w.mutex.lock(&h, None).unwrap(), Acquired::Clean);
            // SAFETY: holding the mutex.
            w.data.with_mut(|d| unsafe { *d += 1 });
            // SAFETY: locked on this thread as 2 above.
            unsafe { w.mutex.unlock(&h) };
            holder.join().unwrap();
            // SAFETY: every thread has been joined.
            assert_eq!(w.data.with(|d| unsafe { *d }), 2);
        });
    }
}

//! Futex wait and wake on words that live in shared memory.
//!
//! These are *shared* futexes: the private flag is never used, so a wake in one process reaches a
//! waiter in another process that maps the same page (the kernel keys shared futexes by the
//! backing inode and offset, not by the virtual address).
//!
//! The [`Notifier`] trait is how protocols sleep and wake. [`Futex`] is the real one; under
//! `--cfg loom` a mock built on loom's condition variable stands in, so loom can find lost
//! wake-ups.
//!
//! # Examples
//!
//! ```
//! use shmbus_core::futex;
//! use std::sync::atomic::AtomicU32;
//! use std::time::Duration;
//!
//! let word = AtomicU32::new(7);
//! // The value is not 7 any more? Then the call returns at once. It is 7, so we sleep 1 ms.
//! let r = futex::wait(&word, 7, Some(Duration::from_millis(1)));
//! assert_eq!(r, futex::Wait::TimedOut);
//! assert_eq!(futex::wait(&word, 8, None), futex::Wait::ValueChanged);
//! assert_eq!(futex::wake(&word, u32::MAX), 0); // nobody sleeps
//! ```
#![deny(unsafe_code)]

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex as sys;

/// How a [`wait`] ended. Spurious wake-ups are possible: callers re-check their condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Woken by a [`wake`], by a signal, or spuriously.
    Woken,
    /// The word did not hold the expected value when the call began.
    ValueChanged,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (`None`: no limit).
///
/// The check and the sleep are one atomic step in the kernel, so a [`wake`] that follows a change
/// of the word is never lost.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wait {
    let ts = timeout.map(|t| sys::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match sys::wait(word, sys::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => Wait::Woken,
        Err(Errno::AGAIN) => Wait::ValueChanged,
        Err(Errno::TIMEDOUT) => Wait::TimedOut,
        // EINTR: a signal arrived. Anything else cannot happen for a valid, aligned reference;
        // reporting a wake-up makes the caller re-check, which is always safe.
        Err(_) => Wait::Woken,
    }
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    // A futex wake cannot fail on a valid, aligned reference; if it somehow did, nobody is woken,
    // which callers already tolerate because every wait is bounded or re-checked.
    sys::wake(word, sys::Flags::empty(), n.min(i32::MAX as u32)).unwrap_or(0)
}

/// Most words one [`wait_many`] sleeps on: the kernel's limit for `futex_waitv`.
///
/// # Examples
///
/// ```
/// assert_eq!(shmbus_core::futex::MAX_WAIT_MANY, 128);
/// ```
pub const MAX_WAIT_MANY: usize = 128;

/// Why a [`wait_many`] could not sleep.
///
/// # Examples
///
/// ```
/// use shmbus_core::futex::{self, WaitManyError};
/// assert_eq!(futex::wait_many(&[], None), Err(WaitManyError::BadCount(0)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitManyError {
    /// The kernel has no `futex_waitv` (Linux older than 5.16, or a filter forbids it).
    #[error("this kernel has no futex_waitv system call (Linux 5.16 or newer is needed)")]
    Unsupported,
    /// More than [`MAX_WAIT_MANY`] words, or none.
    #[error("futex_waitv sleeps on 1 to {MAX_WAIT_MANY} words, not {0}")]
    BadCount(usize),
}

/// Whether the kernel has `futex_waitv` (Linux 5.16 and newer), asked once per call: the probe
/// passes no words, which a kernel that has the call refuses as invalid (`EINVAL`) without
/// sleeping.
///
/// # Examples
///
/// ```
/// // Linux 5.16 and newer have it.
/// println!("futex_waitv: {}", shmbus_core::futex::wait_many_supported());
/// ```
pub fn wait_many_supported() -> bool {
    matches!(
        sys::waitv(
            &[],
            sys::WaitvFlags::empty(),
            None,
            rustix::time::ClockId::Monotonic
        ),
        Err(Errno::INVAL)
    )
}

/// Sleeps while every word of `words` holds its expected value, for at most `timeout` (`None`:
/// no limit): the first change of any word followed by a [`wake`] on it ends the sleep. Shared
/// futexes, 32-bit words (`futex_waitv`, Linux 5.16 and newer).
///
/// As with [`wait`], the check of every word and the sleep are one atomic step in the kernel.
///
/// # Errors
///
/// [`WaitManyError::Unsupported`] when the kernel lacks the call; [`WaitManyError::BadCount`]
/// for zero words or more than [`MAX_WAIT_MANY`].
///
/// # Examples
///
/// ```
/// use shmbus_core::futex::{self, Wait};
/// use std::sync::atomic::AtomicU32;
/// use std::time::Duration;
///
/// if !futex::wait_many_supported() {
///     return; // Linux older than 5.16
/// }
/// let (a, b) = (AtomicU32::new(1), AtomicU32::new(2));
/// // Both words hold what we expect: we sleep the whole millisecond.
/// let r = futex::wait_many(&[(&a, 1), (&b, 2)], Some(Duration::from_millis(1)));
/// assert_eq!(r, Ok(Wait::TimedOut));
/// // One of them does not: the call returns at once.
/// assert_eq!(futex::wait_many(&[(&a, 1), (&b, 3)], None), Ok(Wait::ValueChanged));
/// ```
pub fn wait_many(
    words: &[(&AtomicU32, u32)],
    timeout: Option<Duration>,
) -> Result<Wait, WaitManyError> {
    if words.is_empty() || words.len() > MAX_WAIT_MANY {
        return Err(WaitManyError::BadCount(words.len()));
    }
    let mut list = [sys::Wait::new(); MAX_WAIT_MANY];
    for (slot, (word, expected)) in list.iter_mut().zip(words) {
        slot.val = u64::from(*expected);
        slot.uaddr = sys::WaitPtr::new(word.as_ptr().cast());
        // Shared futexes: no PRIVATE flag, so that wakes from other processes reach us.
        slot.flags = sys::WaitFlags::SIZE_U32;
    }
    // futex_waitv takes an absolute time on the clock it is given.
    let at = timeout.map(|t| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = i64::from(t.subsec_nanos()).saturating_add(now.tv_nsec);
        let secs = i64::try_from(t.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(now.tv_sec)
            .saturating_add(nanos / 1_000_000_000);
        sys::Timespec {
            tv_sec: secs,
            tv_nsec: nanos % 1_000_000_000,
        }
    });
    match sys::waitv(
        &list[..words.len()],
        sys::WaitvFlags::empty(),
        at.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_) => Ok(Wait::Woken),
        Err(Errno::AGAIN) => Ok(Wait::ValueChanged),
        Err(Errno::TIMEDOUT) => Ok(Wait::TimedOut),
        Err(Errno::NOSYS) => Err(WaitManyError::Unsupported),
        // EINTR, or an error a valid list cannot cause: a wake-up makes the caller re-check,
        // which is always safe.
        Err(_) => Ok(Wait::Woken),
    }
}

/// How a protocol sleeps on a word and wakes sleepers; the seam that loom mocks.
pub trait Notifier {
    /// Sleeps while `word == expected`, for at most `timeout`. May wake spuriously.
    fn wait(&self, word: &crate::primitive::AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every sleeper on `word`.
    fn wake_all(&self, word: &crate::primitive::AtomicU32);
    /// Sleeps while every `word == expected` of `words`, for at most `timeout`, woken by a
    /// [`wake_all`](Self::wake_all) on any of them. May wake spuriously. The default has no
    /// such wait and says so.
    ///
    /// # Errors
    ///
    /// Those of [`wait_many`].
    fn wait_many(
        &self,
        words: &[(&crate::primitive::AtomicU32, u32)],
        timeout: Option<Duration>,
    ) -> Result<(), WaitManyError> {
        let _ = (words, timeout);
        Err(WaitManyError::Unsupported)
    }
}

/// The real notifier: shared futexes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Futex;

#[cfg(not(loom))]
impl Notifier for Futex {
    #[inline]
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        wait(word, expected, timeout);
    }
    #[inline]
    fn wake_all(&self, word: &AtomicU32) {
        wake(word, u32::MAX);
    }
    #[inline]
    fn wait_many(
        &self,
        words: &[(&AtomicU32, u32)],
        timeout: Option<Duration>,
    ) -> Result<(), WaitManyError> {
        wait_many(words, timeout).map(drop)
    }
}

/// A futex stand-in for loom: a mutex and a condition variable, with the same contract (the check
/// of the word and the sleep are atomic with respect to a wake).
#[cfg(loom)]
#[derive(Debug, Default)]
pub struct MockFutex {
    lock: loom::sync::Mutex<()>,
    cond: loom::sync::Condvar,
}

#[cfg(loom)]
impl Notifier for MockFutex {
    fn wait(&self, word: &crate::primitive::AtomicU32, expected: u32, timeout: Option<Duration>) {
        use crate::primitive::Ordering;
        let guard = self.lock.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            if timeout.is_some() {
                // A timed wait may return at any moment; modelling it as an immediate return
                // keeps loom's state space small and is a legal futex outcome.
                drop(guard);
                loom::thread::yield_now();
            } else {
                drop(self.cond.wait(guard).unwrap());
            }
        }
    }
    fn wake_all(&self, _word: &crate::primitive::AtomicU32) {
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }
    /// One condition variable serves every word, so a wake on any word wakes a sleeper on many:
    /// the check of all the words and the sleep are atomic with respect to a wake, as in the
    /// kernel's `futex_waitv`.
    fn wait_many(
        &self,
        words: &[(&crate::primitive::AtomicU32, u32)],
        timeout: Option<Duration>,
    ) -> Result<(), WaitManyError> {
        use crate::primitive::Ordering;
        let guard = self.lock.lock().unwrap();
        if words.iter().all(|(w, e)| w.load(Ordering::SeqCst) == *e) {
            if timeout.is_some() {
                drop(guard);
                loom::thread::yield_now();
            } else {
                drop(self.cond.wait(guard).unwrap());
            }
        }
        Ok(())
    }
}

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

/// How a protocol sleeps on a word and wakes sleepers; the seam that loom mocks.
pub trait Notifier {
    /// Sleeps while `word == expected`, for at most `timeout`. May wake spuriously.
    fn wait(&self, word: &crate::primitive::AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every sleeper on `word`.
    fn wake_all(&self, word: &crate::primitive::AtomicU32);
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
}

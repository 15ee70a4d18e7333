//! Waiting on many topics, queues and events at once: one sleep on all their futex words.
//!
//! There is no protocol of its own here. Every waker in shmbus already follows one pattern per
//! futex word (`docs/architecture.md` §8): it makes its change, fences (`SeqCst`), reads a
//! sleeper count, and if it is not zero bumps the word and wakes its sleepers. A blocked receiver
//! counts itself in, fences, loads the word, re-checks its condition and sleeps only while the
//! word is unchanged. A wait set does the same on every word at once ([`sleep_on`]): it counts
//! itself in on each sleeper count, fences once, loads every word, re-checks every attachment,
//! and sleeps with `futex_waitv` on all the words. Per word, the argument is the blocked
//! receiver's: either the waker's read of the count sees the set counted in (and wakes it, or
//! has already changed the word, so the kernel refuses to let it sleep), or the set's re-check,
//! which comes after its fence, sees the waker's change.
//!
//! Publishing with nobody asleep stays free of system calls: the counts are only non-zero while
//! a set sleeps.
//!
//! [`RawWaitSet`] attaches subscribers, array subscribers, queue consumers, events and timers.
//! [`reactor`] does the same for async tasks: one waiter thread per process sleeps on the words
//! of everything some task awaits and wakes the tasks' wakers.
//!
//! # Examples
//!
//! ```
//! use shmbus_core::name::Name;
//! use shmbus_core::segment::Lifetime;
//! use shmbus_core::sync::EventMode;
//! use shmbus_core::named::RawEvent;
//! use shmbus_core::waitset::{RawWaitSet, Readiness, Source};
//! use std::time::Duration;
//!
//! let name = Name::new(&format!("doc-rawwaitset-{}", std::process::id())).unwrap();
//! let stop = RawEvent::open_or_create(&name, EventMode::ManualReset, false, 0o600, Lifetime::Scoped)?;
//! let mut set = RawWaitSet::new()?;
//! let key = set.attach(Source::Event(&stop))?;
//! assert!(set.wait(Some(Duration::from_millis(5)))?.is_empty()); // nothing yet
//! stop.set();
//! assert_eq!(set.wait(Some(Duration::from_secs(1)))?, vec![(key, Readiness::Ready)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use crate::futex::{Notifier, WaitManyError};
use crate::primitive::{fence, AtomicU32, Ordering};

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(not(loom))]
mod raw;
#[cfg(not(loom))]
pub mod reactor;
#[cfg(not(loom))]
pub use raw::{Key, RawWaitSet, Readiness, Source, WaitSetError, MAX_ATTACHMENTS};

/// A futex word and the count of sleepers its wakers read before they wake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words<'a> {
    /// The word sleepers sleep on; wakers change it before they wake.
    pub(crate) word: &'a AtomicU32,
    /// How many sleep on `word`, or are about to.
    pub(crate) sleepers: &'a AtomicU32,
    /// A topic's `light` flag: while it is on, a sleeper makes the heavy barrier before it
    /// re-checks (decision 47). `None` for words whose wakers always fence.
    pub(crate) light: Option<&'a AtomicU32>,
}

/// One sleep on all of `words`: counts in on every sleeper count, fences (`SeqCst`), loads every
/// word, then runs `ready`; if it finds nothing, sleeps until a wake on any word or `timeout`;
/// counts out. Returns what `ready` said (`true`: the set did not sleep).
///
/// `ready` must look at every attachment (it runs after the fence: that is what makes a change
/// made before a waker's fence visible to it).
pub(crate) fn sleep_on<N: Notifier>(
    words: &[Words<'_>],
    notifier: &N,
    timeout: Option<Duration>,
    ready: impl FnOnce() -> bool,
) -> Result<bool, WaitManyError> {
    for w in words {
        // SeqCst is stronger than the fence needs; events' wakers read their count with SeqCst
        // loads rather than after a fence, and this keeps the pairing plain in both cases.
        w.sleepers.fetch_add(1, Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
    // For topics' light publishers (decision 47), before a sleep; without it, no long sleep.
    let timeout = if timeout == Some(Duration::ZERO) {
        timeout
    } else {
        let light = words
            .iter()
            .any(|w| w.light.is_some_and(|l| l.load(Ordering::Acquire) != 0));
        crate::barrier::cap(timeout, !light || crate::barrier::heavy())
    };
    // Acquire: a waker's bump is a release (or follows a release of the change), so a word seen
    // bumped shows the change too.
    let seen: Vec<(&AtomicU32, u32)> = words
        .iter()
        .map(|w| (w.word, w.word.load(Ordering::Acquire)))
        .collect();
    let is_ready = ready();
    let slept = if is_ready || timeout == Some(Duration::ZERO) || seen.is_empty() {
        Ok(())
    } else {
        notifier.wait_many(&seen, timeout)
    };
    for w in words {
        w.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
    slept.map(|()| is_ready)
}

//! Process-shared synchronisation primitives that live inside shared-memory segments.
//!
//! | type | built on | for |
//! |---|---|---|
//! | [`RobustMutex`] | glibc's process-shared, robust `pthread_mutex_t` | mutual exclusion that survives a holder being killed |
//! | [`Semaphore`] | two futex words | counting: free slots, queued items, permits |
//! | [`Event`] | three futex words | "something happened": auto-reset (one waiter per set) or manual-reset (everyone) |
//!
//! # Living in shared memory
//!
//! Every type here is `#[repr(C)]`, holds no pointers and no `std::sync` type, and is meant to sit
//! at a fixed offset inside a segment that several processes map, possibly at different
//! addresses. The futexes are *shared* futexes (see [`crate::futex`]), so a wake-up in one process
//! reaches a sleeper in another.
//!
//! A segment is zero-filled when created. The creator initialises each primitive **in place**
//! ([`RobustMutex::init`], [`Semaphore::init`], [`Event::init`]) before it publishes the segment;
//! nobody else ever calls `init`. The primitives are never moved once in use.
//!
//! # Dead peers
//!
//! Any participant may be killed at any instruction. What that leaves behind:
//!
//! * [`RobustMutex`]: the kernel marks the lock word of a dead holder and the next locker gets
//!   [`Acquired::OwnerDied`].
//! * [`Semaphore`] and [`Event`]: a sleeper that dies leaves a sleeper count too high, which only
//!   costs later posters an unneeded wake-up system call. A sleeper killed in the instant between
//!   being woken and taking what it was woken for absorbs that wake-up; the next post or set wakes
//!   another sleeper, and waits with a timeout are never stuck.
//!
//! # Examples
//!
//! ```
//! use shmbus_core::sync::{Event, EventMode, Semaphore};
//!
//! // On the heap here; in real use these sit inside a mapped segment.
//! let items = Box::new(Semaphore::default());
//! items.init(0);
//! let stop = Box::new(Event::default());
//! stop.init(EventMode::ManualReset, false);
//!
//! items.post().unwrap();
//! assert!(items.wait(None));
//! stop.set();
//! assert!(stop.wait(None));
//! ```

mod event;
mod mutex;
mod semaphore;

pub use event::{Event, EventMode};
pub use mutex::{Acquired, Holders, LockError, RobustMutex, TryLockError};
pub use semaphore::{Semaphore, SemaphoreError};

/// How many times a waiter re-checks before it sleeps in the kernel.
///
/// Each round is one [`std::hint::spin_loop`] plus a load of the futex or lock word (and an
/// attempt to take it when it looks free): together a few microseconds, about the cost of one
/// futex sleep and wake-up. Short critical sections are thus waited out without a system call, and a waiter
/// whose peer has been preempted (this runs on machines with two cores) gives the CPU up soon.
pub(crate) const SPIN_LIMIT: u32 = 100;

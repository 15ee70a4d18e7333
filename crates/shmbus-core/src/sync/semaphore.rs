//! A counting semaphore on shared futexes.
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::futex;
use crate::sync::SPIN_LIMIT;
use crate::time::Deadline;

/// Why [`Semaphore::post`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SemaphoreError {
    /// The count is already [`Semaphore::MAX`]; it was left unchanged.
    #[error("semaphore count would exceed {}", Semaphore::MAX)]
    Overflow,
}

/// A counting semaphore that lives in shared memory and works across processes.
///
/// [`post`](Self::post) adds one to the count; [`wait`](Self::wait) takes one away, sleeping
/// while the count is zero. Neither makes a system call when nobody has to sleep or be woken.
///
/// # Layout
///
/// `#[repr(C)]`, [`SIZE`](Self::SIZE) = 8 bytes, alignment 4: the count (`u32`) at offset 0, the
/// number of sleepers (`u32`) at offset 4. All-zero bytes are a semaphore with count 0, so zeroed
/// memory is usable, but the segment creator should still call [`init`](Self::init).
///
/// # Dead peers
///
/// A waiter killed while asleep never takes itself off the sleeper count. That is harmless: every
/// later post makes one wake-up system call that finds nobody (sleepers are re-checked, never
/// trusted). A waiter killed right after being woken, before taking its unit, leaves the count
/// positive with others possibly asleep; the next post wakes one of them, which then finds two.
///
/// # Examples
///
/// ```
/// use shmbus_core::sync::Semaphore;
/// use std::time::Duration;
///
/// static FREE_SLOTS: Semaphore = Semaphore::new(2);
///
/// assert!(FREE_SLOTS.wait(None));
/// assert!(FREE_SLOTS.try_wait());
/// assert!(!FREE_SLOTS.wait(Some(Duration::from_millis(1)))); // none left: times out
/// FREE_SLOTS.post().unwrap();
/// assert_eq!(FREE_SLOTS.value(), 1);
/// ```
#[repr(C)]
#[derive(Debug, Default)]
pub struct Semaphore {
    /// Units available. Futex word: sleepers wait on it while it is 0.
    count: AtomicU32,
    /// How many waiters are, or are about to be, asleep on `count`. A hint for posters only.
    sleepers: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Semaphore>() == Semaphore::SIZE);
const _: () = assert!(core::mem::align_of::<Semaphore>() == 4);

// The lost-wake-up argument (Dekker's pattern, every access below SeqCst):
//
//   waiter:  sleepers += 1;  c = count;  if c == 0 { futex_wait(count, expect 0) }
//   poster:  count += 1;     s = sleepers;  if s > 0 { futex_wake(count, 1) }
//
// All four accesses are in the single SeqCst total order, so at least one side sees the other's
// write: either the waiter's load sees the new count (it takes the unit and never sleeps), or the
// poster's load sees the waiter counted as a sleeper (it wakes). In the second case the wake
// cannot be lost even if it comes before the waiter is in the kernel: the kernel compares `count`
// with the expected 0 atomically with queueing the waiter, the count is no longer 0, and the wait
// returns at once. A woken waiter (or one whose wait failed or timed out) always re-checks `count`
// before deciding anything, so a wake-up is never consumed without looking, and it gives up only
// after seeing 0 with its deadline passed.
//
// Wake-one is enough: each post makes at most one unit, and a woken waiter that finds the unit
// taken by someone else goes back to sleep, which is correct because that unit was consumed.

impl Semaphore {
    /// Size in bytes of a `Semaphore` in shared memory.
    pub const SIZE: usize = 8;

    /// The largest count; [`post`](Self::post) refuses to go beyond it.
    pub const MAX: u32 = i32::MAX as u32;

    /// A semaphore holding `initial` units, for the heap or a `static` (tests, examples).
    ///
    /// In shared memory, call [`init`](Self::init) on the zeroed bytes instead.
    ///
    /// # Panics
    ///
    /// If `initial` exceeds [`MAX`](Self::MAX).
    pub const fn new(initial: u32) -> Self {
        assert!(
            initial <= Self::MAX,
            "initial semaphore count exceeds Semaphore::MAX"
        );
        Semaphore {
            count: AtomicU32::new(initial),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Initialises the semaphore in place with `initial` units and no sleepers.
    ///
    /// Called once, by the segment creator, before any other process can see the semaphore.
    /// Calling it while others use the semaphore does not cause undefined behaviour but breaks
    /// their counting.
    ///
    /// # Panics
    ///
    /// If `initial` exceeds [`MAX`](Self::MAX).
    pub fn init(&self, initial: u32) {
        assert!(
            initial <= Self::MAX,
            "initial semaphore count exceeds Semaphore::MAX"
        );
        self.sleepers.store(0, Ordering::SeqCst);
        self.count.store(initial, Ordering::SeqCst);
    }

    /// Adds one unit and wakes one sleeper, if any.
    ///
    /// Makes no system call when no waiter sleeps. Everything written before a `post` is visible
    /// to the waiter that takes the unit.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::Overflow`] if the count is already [`MAX`](Self::MAX); nothing changes.
    pub fn post(&self) -> Result<(), SemaphoreError> {
        let mut cur = self.count.load(Ordering::Relaxed);
        loop {
            if cur >= Self::MAX {
                return Err(SemaphoreError::Overflow);
            }
            match self.count.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        // Dekker: this SeqCst load comes after the SeqCst increment (see the comment above).
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake(&self.count, 1);
        }
        Ok(())
    }

    /// Takes one unit if there is one, without ever sleeping. Returns whether it did.
    pub fn try_wait(&self) -> bool {
        let mut cur = self.count.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return false;
            }
            match self.count.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes one unit, waiting at most `timeout` for one (`None`: no limit).
    ///
    /// Returns `true` if a unit was taken, `false` if the timeout passed first. Spins briefly,
    /// then sleeps on the futex; spurious wake-ups are handled inside. `Some(Duration::ZERO)` is
    /// [`try_wait`](Self::try_wait).
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        if self.try_wait() {
            return true;
        }
        if timeout == Some(Duration::ZERO) {
            return false;
        }
        let deadline = Deadline::after(timeout);
        for _ in 0..SPIN_LIMIT {
            std::hint::spin_loop();
            if self.count.load(Ordering::Relaxed) != 0 && self.try_wait() {
                return true;
            }
        }

        // Announce ourselves before the final checks (Dekker; see the comment above the impl).
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let acquired = loop {
            let cur = self.count.load(Ordering::SeqCst);
            if cur > 0 {
                if self
                    .count
                    .compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    break true;
                }
                continue;
            }
            let remaining = deadline.remaining();
            if remaining == Some(Duration::ZERO) {
                break false;
            }
            // Sleep only while the count is still the 0 we just saw; any outcome leads back to
            // the re-check at the top of the loop.
            futex::wait(&self.count, 0, remaining);
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        acquired
    }

    /// The current count: a snapshot that may be stale as soon as it is returned.
    pub fn value(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    /// A bound on waits that should succeed: reached only if the semaphore is broken.
    const SAFETY_NET: Option<Duration> = Some(Duration::from_secs(10));

    /// Runs a wait with [`SAFETY_NET`] as its timeout; true only if it succeeded *and* a wake-up
    /// ended it, not the timeout (a wait that times out re-checks once more and may then succeed,
    /// which would hide a lost wake-up).
    fn woken(wait: impl FnOnce(Option<Duration>) -> bool) -> bool {
        let start = Instant::now();
        wait(SAFETY_NET) && start.elapsed() < SAFETY_NET.unwrap()
    }

    fn heap(initial: u32) -> Arc<Semaphore> {
        let s = Arc::new(Semaphore::default());
        s.init(initial);
        s
    }

    #[test]
    fn counts_up_and_down() {
        let s = heap(2);
        assert_eq!(s.value(), 2);
        assert!(s.try_wait());
        assert!(s.wait(None));
        assert!(!s.try_wait());
        assert_eq!(s.value(), 0);
        s.post().unwrap();
        s.post().unwrap();
        assert_eq!(s.value(), 2);
        assert!(s.wait(Some(Duration::ZERO)));
        assert_eq!(s.value(), 1);
        assert_eq!(s.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn times_out_when_empty() {
        let s = heap(0);
        let start = Instant::now();
        assert!(!s.wait(Some(Duration::from_millis(50))));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(!s.wait(Some(Duration::ZERO)));
        assert_eq!(s.value(), 0);
        assert_eq!(s.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn overflow_is_refused() {
        let s = heap(Semaphore::MAX - 1);
        assert_eq!(s.post(), Ok(()));
        assert_eq!(s.post(), Err(SemaphoreError::Overflow));
        assert_eq!(s.value(), Semaphore::MAX);
        assert!(s.try_wait());
        assert_eq!(s.post(), Ok(()));
    }

    #[test]
    #[should_panic(expected = "exceeds Semaphore::MAX")]
    fn init_above_max_panics() {
        Semaphore::default().init(Semaphore::MAX + 1);
    }

    #[test]
    fn post_wakes_a_sleeper() {
        let s = heap(0);
        let waiter = {
            let s = Arc::clone(&s);
            thread::spawn(move || woken(|t| s.wait(t)))
        };
        // Let the waiter get past its spin and into the kernel (not required for correctness).
        let start = Instant::now();
        while s.sleepers.load(Ordering::SeqCst) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the waiter never slept"
            );
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(20));
        s.post().unwrap();
        assert!(waiter.join().unwrap(), "the sleeper was not woken by post");
        assert_eq!(s.value(), 0);
        assert_eq!(s.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn many_producers_many_consumers_every_unit_taken_once() {
        const PRODUCERS: usize = 3;
        const CONSUMERS: usize = 3;
        const PER_PRODUCER: usize = 2_000;
        const PER_CONSUMER: usize = PRODUCERS * PER_PRODUCER / CONSUMERS;
        let s = heap(0);
        let taken = Arc::new(AtomicUsize::new(0));

        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (s, taken) = (Arc::clone(&s), Arc::clone(&taken));
                thread::spawn(move || {
                    for _ in 0..PER_CONSUMER {
                        assert!(woken(|t| s.wait(t)), "a post was lost");
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|i| {
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    for j in 0..PER_PRODUCER {
                        s.post().unwrap();
                        if (i + j) % 64 == 0 {
                            thread::yield_now(); // let consumers drain and fall asleep
                        }
                    }
                })
            })
            .collect();
        for t in producers.into_iter().chain(consumers) {
            t.join().unwrap();
        }
        assert_eq!(taken.load(Ordering::Relaxed), PRODUCERS * PER_PRODUCER);
        assert_eq!(s.value(), 0);
        assert!(!s.try_wait());
        assert_eq!(s.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn limits_concurrency_to_the_count() {
        const LIMIT: u32 = 2;
        let s = heap(LIMIT);
        let inside = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (s, inside, most) = (Arc::clone(&s), Arc::clone(&inside), Arc::clone(&most));
                thread::spawn(move || {
                    for _ in 0..500 {
                        assert!(woken(|t| s.wait(t)));
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        s.post().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= LIMIT);
        assert_eq!(s.value(), LIMIT);
    }
}

//! An auto-reset or manual-reset event on shared futexes.
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::futex;
use crate::sync::SPIN_LIMIT;
use crate::time::Deadline;

/// How an [`Event`] behaves once set. Stored in shared memory as a `u32`: 0 and 1.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventMode {
    /// Each set lets exactly one waiter through and clears the event again; sets that nobody has
    /// consumed yet do not add up. The value of zero-filled memory.
    AutoReset = 0,
    /// A set lets every waiter through, present and future, until [`Event::reset`].
    ManualReset = 1,
}

/// A flag that threads of any process sharing the memory can wait on, in one of two
/// [modes](EventMode).
///
/// * **Auto-reset**: [`set`](Self::set) wakes one sleeper; whoever takes the event first (a
///   woken sleeper, or a thread arriving in [`wait`](Self::wait) or [`try_wait`](Self::try_wait))
///   clears it, so exactly one waiter returns `true` per set. Setting an event that is already set
///   changes nothing: use a [`Semaphore`](crate::sync::Semaphore) to count.
/// * **Manual-reset**: [`set`](Self::set) wakes every sleeper and the event stays set until
///   [`reset`](Self::reset). Every waiter that was already waiting when `set` ran returns `true`,
///   *even if `reset` follows before it gets to run*: the state carries a generation that each
///   set bumps, so a quick set-then-reset pulse is never missed.
///
/// Neither `set` nor `wait` makes a system call unless someone must sleep or be woken.
///
/// # Layout
///
/// `#[repr(C)]`, [`SIZE`](Self::SIZE) = 12 bytes, alignment 4, three `u32` words:
///
/// | offset | field | meaning |
/// |---|---|---|
/// | 0 | state | bit 0: set; bits 1..32: generation, +1 at every set (futex word) |
/// | 4 | sleepers | waiters asleep or about to sleep (hint for `set`) |
/// | 8 | mode | [`EventMode`] as 0 or 1; written only by [`init`](Self::init) |
///
/// Zero-filled memory is an unset auto-reset event.
///
/// # A corrupt mode
///
/// Only [`init`](Self::init) writes the mode, but the word sits in memory other processes can
/// write. A value other than 0 or 1 makes [`mode`](Self::mode) return `None`, and every operation
/// then behaves as **auto-reset** (nothing panics). Auto-reset is the safe reading: a set is
/// handed to at most one waiter and the event never stays stuck in the set state, so a consumer
/// loop can neither run twice for one set nor spin. Its cost — other waiters of a would-be
/// manual-reset event not waking — is bounded by their timeouts. Segment validation can check
/// `mode().is_some()`.
///
/// # Dead peers
///
/// A waiter killed while asleep leaves `sleepers` too high: later sets make a wake-up system call
/// for nobody, nothing worse. An auto-reset waiter killed right after being woken absorbs that
/// wake-up and leaves the event set with others possibly asleep; `set` always wakes when there
/// are sleepers, even if the event is already set, so the next set hands it on.
///
/// # Examples
///
/// ```
/// use shmbus_core::sync::{Event, EventMode};
/// use std::time::Duration;
///
/// static DATA_READY: Event = Event::new(EventMode::AutoReset, false);
///
/// std::thread::scope(|s| {
///     let consumer = s.spawn(|| DATA_READY.wait(Some(Duration::from_secs(10))));
///     DATA_READY.set();
///     assert!(consumer.join().unwrap());
/// });
/// assert!(!DATA_READY.is_set()); // the consumer took it
///
/// let shutdown = Box::new(Event::default());
/// shutdown.init(EventMode::ManualReset, false);
/// assert!(!shutdown.wait(Some(Duration::from_millis(1))));
/// shutdown.set();
/// assert!(shutdown.try_wait() && shutdown.try_wait()); // stays set
/// ```
#[repr(C)]
#[derive(Debug, Default)]
pub struct Event {
    /// Bit 0: set. Bits 1..32: generation. The futex word.
    state: AtomicU32,
    /// How many waiters are, or are about to be, asleep on `state`. A hint for `set` only.
    sleepers: AtomicU32,
    /// An [`EventMode`] as `u32`.
    mode: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Event>() == Event::SIZE);
const _: () = assert!(core::mem::align_of::<Event>() == 4);

/// Bit 0 of `state`.
const SET: u32 = 1;
/// What [`Event::set`] adds to the generation in bits 1..32.
const GENERATION_STEP: u32 = 2;

fn is_set_bit(state: u32) -> bool {
    state & SET != 0
}

fn generation(state: u32) -> u32 {
    state >> 1
}

// The lost-wake-up argument is the one of the semaphore (Dekker's pattern, all SeqCst):
//
//   waiter:  sleepers += 1;  s = state;  if not satisfied by s { futex_wait(state, expect s) }
//   setter:  state = (generation + 1) | SET;  n = sleepers;  if n > 0 { futex_wake(state, ..) }
//
// Either the waiter's load sees the set, or the setter's load sees the sleeper and wakes. Every
// set changes the state word (the generation moves even if the event was already set), so a wake
// that comes before the waiter is queued finds the word different from the expected `s` and the
// futex wait returns at once. After any return from the futex, the waiter re-checks the state
// before doing anything else, timeouts included.

impl Event {
    /// Size in bytes of an `Event` in shared memory.
    pub const SIZE: usize = 12;

    /// An event in `mode`, set or not, for the heap or a `static` (tests, examples).
    ///
    /// In shared memory, call [`init`](Self::init) on the zeroed bytes instead.
    pub const fn new(mode: EventMode, initially_set: bool) -> Self {
        Event {
            state: AtomicU32::new(if initially_set { SET } else { 0 }),
            sleepers: AtomicU32::new(0),
            mode: AtomicU32::new(mode as u32),
        }
    }

    /// Initialises the event in place: its mode, whether it starts set, and no sleepers.
    ///
    /// Called once, by the segment creator, before any other process can see the event; it is
    /// the only writer of the mode. Calling it while others use the event does not cause
    /// undefined behaviour but may strand their waiters until their timeouts.
    pub fn init(&self, mode: EventMode, initially_set: bool) {
        self.mode.store(mode as u32, Ordering::SeqCst);
        self.sleepers.store(0, Ordering::SeqCst);
        self.state
            .store(if initially_set { SET } else { 0 }, Ordering::SeqCst);
    }

    /// The mode set by [`init`](Self::init), or `None` if the stored word is neither 0 nor 1
    /// (corrupt; the event then behaves as [`EventMode::AutoReset`]).
    pub fn mode(&self) -> Option<EventMode> {
        // Relaxed: the mode is written once, before the segment is published; publishing (with
        // release and acquire) is what orders it for other processes.
        match self.mode.load(Ordering::Relaxed) {
            0 => Some(EventMode::AutoReset),
            1 => Some(EventMode::ManualReset),
            _ => None,
        }
    }

    /// The mode the operations follow: a corrupt mode reads as auto-reset.
    fn effective_mode(&self) -> EventMode {
        self.mode().unwrap_or(EventMode::AutoReset)
    }

    /// Sets the event and wakes waiters: one in auto-reset mode, all in manual-reset mode.
    ///
    /// Everything written before `set` is visible to a waiter that returns `true` because of it.
    /// Makes no system call when nobody sleeps.
    pub fn set(&self) {
        self.set_counted();
    }

    /// Sets the event, as [`set`](Self::set), and returns the number of sets so far (wrapping,
    /// 31 bits), this one included: what [`sets`](Self::sets) reads from now on until the
    /// next set.
    pub fn set_counted(&self) -> u32 {
        // Bump the generation even if already set, so that sleepers' futex words always change.
        let mut cur = self.state.load(Ordering::Relaxed);
        let new = loop {
            let new = (cur & !SET).wrapping_add(GENERATION_STEP) | SET;
            match self
                .state
                .compare_exchange_weak(cur, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break new,
                Err(actual) => cur = actual,
            }
        };
        // Dekker: this SeqCst load comes after the SeqCst update of the state.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let n = match self.effective_mode() {
                EventMode::AutoReset => 1,
                EventMode::ManualReset => u32::MAX,
            };
            futex::wake(&self.state, n);
        }
        generation(new)
    }

    /// How many times the event was set (wrapping, 31 bits): every set adds one, whether or not
    /// the event was already set, and a wait or reset does not change it. A watcher that sees
    /// it move knows a set happened without consuming it.
    pub fn sets(&self) -> u32 {
        generation(self.state.load(Ordering::SeqCst))
    }

    /// The word waiters sleep on and their count, for a wait set (see [`crate::waitset`]).
    /// `set` changes the word (SeqCst) before it reads the count (SeqCst).
    #[cfg(not(loom))]
    pub(crate) fn wake_words(&self) -> crate::waitset::Words<'_> {
        crate::waitset::Words {
            word: &self.state,
            sleepers: &self.sleepers,
            light: None,
        }
    }

    /// Clears the event. Waiters that were already released by an earlier set stay released
    /// (see the type's documentation). Mostly for manual-reset events.
    pub fn reset(&self) {
        self.state.fetch_and(!SET, Ordering::SeqCst);
    }

    /// Whether the event is set now: a snapshot that may be stale as soon as it is returned.
    /// Does not consume an auto-reset event.
    pub fn is_set(&self) -> bool {
        is_set_bit(self.state.load(Ordering::Acquire))
    }

    /// Returns whether the event is set, without sleeping; in auto-reset mode, also clears it if
    /// it was (this caller is then the one waiter the set was for).
    pub fn try_wait(&self) -> bool {
        match self.effective_mode() {
            EventMode::ManualReset => is_set_bit(self.state.load(Ordering::SeqCst)),
            EventMode::AutoReset => self.try_consume(),
        }
    }

    /// Auto-reset: clears the set bit if it is set, returning whether this call cleared it.
    fn try_consume(&self) -> bool {
        let mut cur = self.state.load(Ordering::SeqCst);
        while is_set_bit(cur) {
            match self.state.compare_exchange_weak(
                cur,
                cur & !SET,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
        false
    }

    /// Waits at most `timeout` (`None`: no limit) for the event. Returns `true` if it was set,
    /// `false` if the timeout passed first.
    ///
    /// Auto-reset: `true` means this caller consumed the set. Manual-reset: `true` means the event
    /// is set, or was set at some moment after this call began. Spins briefly, then sleeps on the
    /// futex; spurious wake-ups are handled inside. `Some(Duration::ZERO)` is
    /// [`try_wait`](Self::try_wait).
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let mode = self.effective_mode();
        let start = self.state.load(Ordering::SeqCst);
        // Has the wait been satisfied, given the state word `s`?
        let satisfied = |s: u32| match mode {
            EventMode::ManualReset => is_set_bit(s) || generation(s) != generation(start),
            EventMode::AutoReset => is_set_bit(s) && self.try_consume(),
        };
        if satisfied(start) {
            return true;
        }
        if timeout == Some(Duration::ZERO) {
            return false;
        }
        let deadline = Deadline::after(timeout);
        for _ in 0..SPIN_LIMIT {
            std::hint::spin_loop();
            if satisfied(self.state.load(Ordering::Relaxed)) {
                return true;
            }
        }

        // Announce ourselves before the final checks (Dekker; see the comment above the impl).
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let released = loop {
            let s = self.state.load(Ordering::SeqCst);
            if satisfied(s) {
                break true;
            }
            if is_set_bit(s) {
                // Auto-reset, and another waiter consumed it between our load and our attempt.
                continue;
            }
            let remaining = deadline.remaining();
            if remaining == Some(Duration::ZERO) {
                break false;
            }
            // Sleep only while the word is still `s`; every outcome leads back to the re-check.
            futex::wait(&self.state, s, remaining);
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    /// A bound on waits that should succeed: reached only if the event is broken.
    const SAFETY_NET: Option<Duration> = Some(Duration::from_secs(10));

    /// Runs a wait with [`SAFETY_NET`] as its timeout; true only if it succeeded *and* a wake-up
    /// ended it, not the timeout (a wait that times out re-checks once more and may then succeed,
    /// which would hide a lost wake-up).
    fn woken(wait: impl FnOnce(Option<Duration>) -> bool) -> bool {
        let start = Instant::now();
        wait(SAFETY_NET) && start.elapsed() < SAFETY_NET.unwrap()
    }

    fn heap(mode: EventMode, initially_set: bool) -> Arc<Event> {
        let e = Arc::new(Event::default());
        e.init(mode, initially_set);
        e
    }

    /// Spins until `n` waiters have announced themselves as sleepers, then gives them a moment
    /// to get into the kernel (which the tests do not depend on for correctness).
    fn await_sleepers(e: &Event, n: u32) {
        let start = Instant::now();
        while e.sleepers.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waiters never slept"
            );
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(20));
    }

    #[test]
    fn zeroed_memory_is_an_unset_auto_reset_event() {
        let e = Event::default();
        assert_eq!(e.mode(), Some(EventMode::AutoReset));
        assert!(!e.is_set());
        assert!(!e.try_wait());
    }

    #[test]
    fn init_sets_mode_and_state() {
        let e = heap(EventMode::ManualReset, true);
        assert_eq!(e.mode(), Some(EventMode::ManualReset));
        assert!(e.is_set());
        assert!(e.wait(None));
        assert!(e.is_set());
        e.init(EventMode::AutoReset, false);
        assert_eq!(e.mode(), Some(EventMode::AutoReset));
        assert!(!e.is_set());
    }

    #[test]
    fn auto_reset_try_wait_consumes_and_sets_do_not_accumulate() {
        let e = heap(EventMode::AutoReset, true);
        assert!(e.try_wait());
        assert!(!e.try_wait());
        assert!(!e.is_set());
        e.set();
        e.set();
        assert!(e.is_set());
        assert!(e.wait(Some(Duration::ZERO)));
        assert!(!e.try_wait());
    }

    #[test]
    fn manual_reset_stays_set_until_reset() {
        let e = heap(EventMode::ManualReset, false);
        assert!(!e.try_wait());
        e.set();
        assert!(e.try_wait());
        assert!(e.try_wait());
        assert!(e.wait(None));
        assert!(e.is_set());
        e.reset();
        assert!(!e.is_set());
        assert!(!e.try_wait());
        assert!(!e.wait(Some(Duration::ZERO)));
    }

    #[test]
    fn times_out_in_both_modes() {
        for mode in [EventMode::AutoReset, EventMode::ManualReset] {
            let e = heap(mode, false);
            let start = Instant::now();
            assert!(!e.wait(Some(Duration::from_millis(30))), "{mode:?}");
            assert!(start.elapsed() >= Duration::from_millis(30), "{mode:?}");
            assert_eq!(e.sleepers.load(Ordering::SeqCst), 0, "{mode:?}");
        }
    }

    #[test]
    fn manual_reset_set_releases_every_sleeper() {
        const WAITERS: u32 = 3;
        let e = heap(EventMode::ManualReset, false);
        let threads: Vec<_> = (0..WAITERS)
            .map(|_| {
                let e = Arc::clone(&e);
                thread::spawn(move || woken(|t| e.wait(t)))
            })
            .collect();
        await_sleepers(&e, WAITERS);
        e.set();
        for t in threads {
            assert!(t.join().unwrap(), "a sleeper missed a manual-reset set");
        }
        assert!(e.is_set());
        assert_eq!(e.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn manual_reset_pulse_is_not_missed() {
        const WAITERS: u32 = 3;
        let e = heap(EventMode::ManualReset, false);
        let threads: Vec<_> = (0..WAITERS)
            .map(|_| {
                let e = Arc::clone(&e);
                thread::spawn(move || woken(|t| e.wait(t)))
            })
            .collect();
        await_sleepers(&e, WAITERS);
        e.set();
        e.reset(); // before the woken sleepers get to run, most likely
        for t in threads {
            assert!(
                t.join().unwrap(),
                "a sleeper missed a set followed by a reset"
            );
        }
        assert!(!e.is_set());
    }

    #[test]
    fn auto_reset_set_releases_exactly_one_sleeper() {
        const WAITERS: usize = 3;
        let e = heap(EventMode::AutoReset, false);
        let released = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (e, released) = (Arc::clone(&e), Arc::clone(&released));
                thread::spawn(move || {
                    let ok = woken(|t| e.wait(t));
                    released.fetch_add(1, Ordering::SeqCst);
                    ok
                })
            })
            .collect();
        await_sleepers(&e, WAITERS as u32);
        for round in 1..=WAITERS {
            e.set();
            let start = Instant::now();
            while released.load(Ordering::SeqCst) < round {
                assert!(start.elapsed() < Duration::from_secs(10), "set woke nobody");
                thread::yield_now();
            }
            // Give a wrongly released second waiter time to show up.
            thread::sleep(Duration::from_millis(30));
            assert_eq!(
                released.load(Ordering::SeqCst),
                round,
                "one set released two waiters"
            );
            assert!(!e.is_set(), "the released waiter did not consume the set");
        }
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(e.sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn auto_reset_ping_pong_loses_no_set_and_releases_once_per_set() {
        const ROUNDS: usize = 5_000;
        let ping = heap(EventMode::AutoReset, false);
        let pong = heap(EventMode::AutoReset, false);
        let stop = Arc::new(AtomicU32::new(0));
        let echo = {
            let (ping, pong, stop) = (Arc::clone(&ping), Arc::clone(&pong), Arc::clone(&stop));
            thread::spawn(move || {
                let mut released = 0;
                loop {
                    assert!(woken(|t| ping.wait(t)), "a ping was lost");
                    released += 1;
                    if stop.load(Ordering::SeqCst) != 0 {
                        return released;
                    }
                    pong.set();
                }
            })
        };
        for _ in 0..ROUNDS {
            ping.set();
            assert!(woken(|t| pong.wait(t)), "a pong was lost");
        }
        stop.store(1, Ordering::SeqCst);
        ping.set();
        // One release per ping: an event that did not reset on consumption would release the
        // echo thread again without a new ping, and it would count more.
        assert_eq!(echo.join().unwrap(), ROUNDS + 1);
        assert!(!ping.is_set() && !pong.is_set());
    }

    #[test]
    fn corrupt_mode_reads_as_none_and_acts_auto_reset() {
        let e = heap(EventMode::ManualReset, false);
        e.mode.store(7, Ordering::SeqCst);
        assert_eq!(e.mode(), None);
        e.set();
        assert!(e.is_set());
        assert!(e.try_wait());
        assert!(!e.try_wait());
        assert!(!e.wait(Some(Duration::from_millis(1))));
        e.set();
        assert!(e.wait(None));
        assert!(!e.is_set());
    }
}

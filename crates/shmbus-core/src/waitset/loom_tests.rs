//! Loom model of a wait set's sleep on two topics (the real `sleep_on` and the real ring code,
//! on heap memory, with the futex mock's multi-word wait).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p shmbus-core --lib --release loom_tests`.
use crate::futex::MockFutex;
use crate::ring::{Acquired, HeapRing, Overflow, Ring, RingConfig};
use crate::waitset::sleep_on;
use loom::sync::Arc;
use loom::thread;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

fn ring() -> HeapRing {
    HeapRing::new(RingConfig {
        capacity: 2,
        slot_size: 8,
        max_subscribers: 1,
        max_publishers: 1,
        max_held: 1,
        overflow: Overflow::Overwrite,
        timestamps: false,
        inline: 0,
    })
    .unwrap()
}

struct Two {
    rings: [HeapRing; 2],
    /// One mock serves both words, as the kernel serves every futex: a wake on either word
    /// reaches a sleeper on both.
    futex: MockFutex,
}

impl Two {
    fn ring(&self, i: usize) -> &Ring {
        self.rings[i].ring()
    }

    fn publish(&self, i: usize) {
        let mut hint = 0;
        let slot = self.ring(i).loan(0, &mut hint).unwrap();
        // SAFETY: one publishing thread per ring; the slot is our loan.
        let _ = unsafe { self.ring(i).publish(slot, &self.futex) };
    }
}

/// The waiter sleeps without a timeout (the mock then really blocks): a lost wake-up is a
/// deadlock, which loom reports.
fn waiter_gets_a_publish_on(which: usize) {
    model(move || {
        let m = Arc::new(Two {
            rings: [ring(), ring()],
            futex: MockFutex::default(),
        });
        let mut cursors = [
            m.ring(0).join_subscriber(0, 1, 0),
            m.ring(1).join_subscriber(0, 1, 0),
        ];
        let p = {
            let m = m.clone();
            thread::spawn(move || m.publish(which))
        };
        let words = [m.ring(0).notify_words(), m.ring(1).notify_words()];
        let ready = |c: &[u64; 2]| (0..2).find(|&i| m.ring(i).ready(c[i]));
        let found = loop {
            if let Some(i) = ready(&cursors) {
                break i;
            }
            sleep_on(&words, &m.futex, None, || ready(&cursors).is_some()).unwrap();
        };
        assert_eq!(found, which, "only ring {which} was published on");
        match m
            .ring(found)
            .try_acquire(0, &mut cursors[found], &m.futex)
            .unwrap()
        {
            Acquired::Message { seq, slot } => {
                assert_eq!(seq, 0);
                m.ring(found).release(0, slot);
            }
            other => panic!("expected the message, got {other:?}"),
        }
        p.join().unwrap();
        // Counted out of both rings again.
        for w in &words {
            assert_eq!(w.sleepers.load(crate::primitive::Ordering::SeqCst), 0);
        }
    });
}

#[test]
fn waiter_on_two_words_gets_a_publish_on_the_first() {
    waiter_gets_a_publish_on(0);
}

#[test]
fn waiter_on_two_words_gets_a_publish_on_the_second() {
    waiter_gets_a_publish_on(1);
}

/// The async waiter thread's hand-off (`reactor.rs`), on the real ring: a task arms (counts in,
/// fences, records the word), re-checks, and hands what it recorded to the waiter thread, which
/// sleeps on the recorded value (and its own word) and wakes the task when the word moved. A
/// publish racing any step of that must wake the task: the task sleeps without a timeout, so a
/// lost wake-up is a deadlock loom reports.
fn waiter_thread_wakes_the_task(publish_first: bool) {
    use crate::futex::Notifier;
    use crate::primitive::{fence, AtomicU32, Ordering};
    use loom::sync::Mutex;

    struct World {
        ring: HeapRing,
        futex: MockFutex,
        /// What the task handed to the waiter thread: the word's value it recorded.
        armed: Mutex<Option<u32>>,
        /// The waiter thread's own word, changed by a hand-off.
        control: AtomicU32,
        /// The task's "waker": set by the waiter thread.
        woken: AtomicU32,
    }
    model(move || {
        let w = Arc::new(World {
            ring: ring(),
            futex: MockFutex::default(),
            armed: Mutex::new(None),
            control: AtomicU32::new(0),
            woken: AtomicU32::new(0),
        });
        let ring = || w.ring.ring();
        let mut cursor = ring().join_subscriber(0, 1, 0);
        let publish = {
            let w = w.clone();
            move || {
                let mut hint = 0;
                let slot = w.ring.ring().loan(0, &mut hint).unwrap();
                // SAFETY: one publishing thread; the slot is our loan.
                let _ = unsafe { w.ring.ring().publish(slot, &w.futex) };
            }
        };
        if publish_first {
            publish();
        }
        let p = (!publish_first).then(|| thread::spawn(publish));
        // The waiter thread: one registration, then it ends.
        let waiter = {
            let w = w.clone();
            thread::spawn(move || loop {
                let control = w.control.load(Ordering::SeqCst);
                let armed = *w.armed.lock().unwrap();
                let words = w.ring.ring().notify_words();
                match armed {
                    None => w.futex.wait(&w.control, control, None),
                    Some(seen) if words.word.load(Ordering::Acquire) != seen => {
                        words.sleepers.fetch_sub(1, Ordering::SeqCst);
                        w.woken.store(1, Ordering::SeqCst);
                        w.futex.wake_all(&w.woken);
                        return;
                    }
                    Some(seen) => {
                        w.futex
                            .wait_many(&[(&w.control, control), (words.word, seen)], None)
                            .unwrap();
                    }
                }
            })
        };
        // The task's poll.
        let mut fired = false;
        if !ring().ready(cursor) {
            let words = ring().notify_words();
            words.sleepers.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let seen = words.word.load(Ordering::Acquire);
            if ring().ready(cursor) {
                // The re-check found it: disarm (the waiter thread never heard of it).
                words.sleepers.fetch_sub(1, Ordering::SeqCst);
            } else {
                *w.armed.lock().unwrap() = Some(seen);
                w.control.fetch_add(1, Ordering::SeqCst);
                w.futex.wake_all(&w.control);
                // Pending, until the waker runs.
                while w.woken.load(Ordering::SeqCst) == 0 {
                    w.futex.wait(&w.woken, 0, None);
                }
                fired = true;
            }
        }
        match ring().try_acquire(0, &mut cursor, &w.futex).unwrap() {
            Acquired::Message { seq, slot } => {
                assert_eq!(seq, 0);
                ring().release(0, slot);
            }
            other => panic!("woken without the message: {other:?}"),
        }
        if let Some(p) = p {
            p.join().unwrap();
        }
        if !fired {
            // Nothing was handed over: end the waiter thread with a registration that fires.
            let words = ring().notify_words();
            words.sleepers.fetch_add(1, Ordering::SeqCst);
            *w.armed.lock().unwrap() = Some(words.word.load(Ordering::SeqCst).wrapping_add(1));
            w.control.fetch_add(1, Ordering::SeqCst);
            w.futex.wake_all(&w.control);
        }
        waiter.join().unwrap();
        assert_eq!(
            ring().notify_words().sleepers.load(Ordering::SeqCst),
            0,
            "counted out again"
        );
    });
}

#[test]
fn waiter_thread_wakes_a_task_that_armed_while_a_publish_raced() {
    waiter_thread_wakes_the_task(false);
}

#[test]
fn waiter_thread_is_not_needed_when_the_message_came_first() {
    waiter_thread_wakes_the_task(true);
}

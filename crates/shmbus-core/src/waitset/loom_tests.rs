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

//! Loom models of the topic ring protocol.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p shmbus-core --lib --release` (what
//! `scripts/test` does). They live inside the crate because the protocol's mutators are
//! crate-private. Each model runs the real protocol code (`crate::ring`) on heap memory, with loom's
//! atomics and a futex mock built on loom's condition variable, and explores every interleaving
//! (up to `LOOM_MAX_PREEMPTIONS`). Message payloads live in loom `UnsafeCell`s indexed by slot,
//! so a slot read while someone writes it is reported as a data race.
use crate::futex::MockFutex;
use crate::ring::{Acquired, Evicted, HeapRing, Overflow, Read, Ring, RingConfig};
use crate::time::Deadline;
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Runs `f` under loom with room for the spin loops of the protocol (a reader that finds an
/// entry being rewritten retries).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

struct Model {
    ring: HeapRing,
    data: Vec<UnsafeCell<u64>>,
    /// The same payload as two words per slot, written and read with relaxed atomics: what a
    /// reader that copies a slot without holding it sees ([`Ring::try_read`]). Two words, so
    /// that a copy of half an old and half a new message shows.
    words: Vec<[AtomicU64; 2]>,
    /// The publisher's next loan when a publish handed it the evicted slot (`NO_SPARE`: none),
    /// as `RawPublisher` keeps it. Only the publishing thread touches it.
    spare: AtomicU64,
    /// The further loans a batch keeps ahead (`RawPublisher`'s reserve). Only the publishing
    /// thread touches it.
    reserve: std::sync::Mutex<Vec<u32>>,
    futex: MockFutex,
}

const NO_SPARE: u64 = u64::MAX;

impl Model {
    fn new(capacity: u32, subscribers: u32, overflow: Overflow) -> Arc<Model> {
        Model::with_inline(capacity, subscribers, overflow, 0)
    }

    /// [`Model::new`] whose entries carry the first `inline` bytes of their message.
    fn with_inline(capacity: u32, subscribers: u32, overflow: Overflow, inline: u32) -> Arc<Model> {
        let ring = HeapRing::new(RingConfig {
            capacity,
            slot_size: 8,
            max_subscribers: subscribers,
            max_publishers: 1,
            max_held: 1,
            overflow,
            timestamps: false,
            inline,
        })
        .unwrap();
        let slots = ring.ring().layout().slots as usize;
        Arc::new(Model {
            ring,
            data: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            words: (0..slots)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            spare: AtomicU64::new(NO_SPARE),
            reserve: std::sync::Mutex::new(Vec::new()),
            futex: MockFutex::default(),
        })
    }

    fn ring(&self) -> &Ring {
        self.ring.ring()
    }

    /// Loans (or takes the slot the last publish handed over), writes `value`, publishes as
    /// `RawPublisher` does: the evicted slot goes straight to the next loan when nobody holds
    /// it. Single publisher: we have publish rights.
    fn send(&self, hint: &mut u32, value: u64) {
        self.send_quietly(hint, value);
        self.ring().wake_subscribers(&self.futex);
    }

    /// [`Model::send`] without the wake: one publish of a batch that the caller ends with
    /// `wake_subscribers`.
    fn send_quietly(&self, hint: &mut u32, value: u64) {
        let slot = self.take_loan(hint);
        self.write(slot, value);
        // SAFETY: one publishing thread per model; the slot is our loan and is written; the
        // caller wakes (`send`, or the end of its batch).
        let (_, evicted) = unsafe { self.ring().publish_quietly(slot, Some(0)) };
        match evicted {
            Evicted::Loaned(s) => self.spare.store(u64::from(s), Ordering::Relaxed),
            Evicted::Free(f) => *hint = f,
            Evicted::Nothing => {}
        }
    }

    /// A batch as `RawPublisher::publish_many` sends it: each message into a loan of its own,
    /// entered with `write_entry`; then one `fence(SeqCst)` (in `wake_subscribers`) and the
    /// eviction without a read-modify-write of every slot the batch overwrote
    /// (`evict_after_fence`), whose slots become the next loans. With `backpressure`, a message
    /// that finds no room ends the chunk the same way first, then waits.
    fn send_batch(&self, hint: &mut u32, values: &[u64], backpressure: bool) {
        let mut room = crate::ring::RoomCache::new();
        let mut retired = Vec::new();
        for &value in values {
            if backpressure && !self.ring().has_room_cached(&mut room) {
                self.end_chunk(hint, &mut retired);
                assert!(self
                    .ring()
                    .wait_for_space(&self.futex, Deadline::never(), None, || {}));
            }
            let slot = self.take_loan(hint);
            self.write(slot, value);
            // SAFETY: one publishing thread per model; the slot is our loan, written; what it
            // returns is evicted by `end_chunk` before any wait and at the end.
            let (_, old) = unsafe { self.ring().write_entry(slot, u8::MAX) }.unwrap();
            retired.extend(old);
        }
        self.end_chunk(hint, &mut retired);
    }

    /// The end of a chunk of [`Model::send_batch`] (`RawPublisher::end_chunk`).
    fn end_chunk(&self, hint: &mut u32, retired: &mut Vec<u32>) {
        self.ring().wake_subscribers(&self.futex);
        for old in retired.drain(..) {
            // SAFETY: `wake_subscribers` fenced (SeqCst) after the entry writes; one publishing
            // thread; each slot once.
            match unsafe { self.ring().evict_after_fence(old, 0) } {
                Evicted::Loaned(s) => self.reserve.lock().unwrap().push(s),
                Evicted::Free(f) => *hint = f,
                Evicted::Nothing => {}
            }
        }
    }

    /// The publisher's next loan: the spare, else the reserve, else a new loan.
    fn take_loan(&self, hint: &mut u32) -> u32 {
        match self.spare.swap(NO_SPARE, Ordering::Relaxed) {
            NO_SPARE => self.reserve.lock().unwrap().pop().unwrap_or_else(|| {
                self.ring()
                    .loan(0, hint)
                    .expect("the pool is sized for every participant")
            }),
            s => s as u32,
        }
    }

    /// Writes `value` into loaned `slot`: the cell held readers read, the atomic words copying
    /// readers read, and the slot's memory, from which a publish copies the entry's words.
    fn write(&self, slot: u32, value: u64) {
        self.data[slot as usize].with_mut(|p| {
            // SAFETY: the cell's pointer is valid in the closure; whether the access races
            // another is what the model checks (the slot is this thread's loan or hold).
            unsafe { *p = value }
        });
        for w in &self.words[slot as usize] {
            w.store(value, Ordering::Relaxed);
        }
        // And in the slot's memory, two words, where the publish copies the entry's inline
        // bytes from (plain memory: only this thread touches it; readers of the copy read the
        // entry's loom atomics).
        let p = self.ring().slot_ptr(slot).cast::<u64>().as_ptr();
        // SAFETY: the slot is this thread's loan, 64 bytes, aligned; nobody else reads it.
        unsafe {
            p.write(value);
            p.add(1).write(value);
        }
    }

    /// One non-blocking receive: Some(Ok(value)), Some(Err(skipped)), or None when empty.
    fn try_recv(&self, k: u32, cursor: &mut u64) -> Option<Result<(u64, u64), u64>> {
        match self.ring().try_acquire(k, cursor, &self.futex).unwrap() {
            Acquired::Message { seq, slot } => {
                let v = self.data[slot as usize].with(|p| {
                    // SAFETY: the cell's pointer is valid in the closure; whether the access races
                    // another is what the model checks (the slot is this thread's loan or hold).
                    unsafe { *p }
                });
                self.ring().release(k, slot);
                Some(Ok((seq, v)))
            }
            Acquired::Lagged { skipped } => Some(Err(skipped)),
            Acquired::Empty => None,
        }
    }
}

impl Model {
    /// One copying receive ([`Ring::try_read`], no hold), as a batch of `keep_going` decides:
    /// Some(Ok((seq, value))), Some(Err(skipped)), or None when empty or stopped.
    fn try_copy(
        &self,
        k: u32,
        cursor: &mut u64,
        keep_going: bool,
    ) -> Option<Result<(u64, u64), u64>> {
        let mut guess = crate::ring::SlotGuess::default();
        let read = self
            .ring()
            .try_read(k, cursor, keep_going, Some(&mut guess), |slot, _| {
                let [a, b] = &self.words[slot as usize];
                (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed))
            });
        Model::copied(read.unwrap())
    }

    /// [`Model::try_copy`] that reads the two words the entry carries (a model built
    /// [`Model::with_inline`] 16 bytes), not the slot.
    fn try_copy_inline(&self, k: u32, cursor: &mut u64) -> Received {
        let read = self.ring().try_read(k, cursor, true, None, |_, words| {
            let [a, b] = words else {
                panic!("16 inline bytes are two words, not {}", words.len())
            };
            (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed))
        });
        Model::copied(read.unwrap())
    }

    fn copied(read: Read<(u64, u64)>) -> Received {
        match read {
            Read::Message { seq, value: (a, b) } => {
                assert_eq!(a, b, "a copy that passed the check is of one message");
                Some(Ok((seq, a)))
            }
            Read::Lagged { skipped } => Some(Err(skipped)),
            Read::Empty | Read::Stop => None,
        }
    }
}

/// What one non-blocking receive of a model found: Some(Ok((seq, value))), Some(Err(skipped)),
/// or None when empty.
type Received = Option<Result<(u64, u64), u64>>;

/// Message `seq` carries this value, so a reader can tell a torn or misplaced read.
fn value_of(seq: u64) -> u64 {
    1000 + seq
}

#[test]
fn publish_then_receive_in_order() {
    model(|| {
        let m = Model::new(2, 1, Overflow::Overwrite);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                for seq in 0..2 {
                    m.send(&mut hint, value_of(seq));
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 2 {
            match m.try_recv(0, &mut cursor) {
                Some(Ok((seq, v))) => {
                    assert_eq!(v, value_of(seq), "a sample must hold its own message");
                    got.push(seq);
                }
                Some(Err(skipped)) => {
                    panic!("capacity 2 cannot lag with 2 messages (skipped {skipped})")
                }
                None => thread::yield_now(),
            }
        }
        assert_eq!(got, vec![0, 1]);
        p.join().unwrap();
    });
}

#[test]
fn overwrite_reports_lag_and_accounts_for_every_message() {
    overwrite_accounts_for_every_message(0, false, |m, cursor| m.try_recv(0, cursor));
}

#[test]
fn a_batch_evicting_without_an_rmw_never_reuses_a_held_slot() {
    // The held receive against batches that evict with a load and a store after one fence: a
    // hold the eviction's load missed must fail its re-check (else the publisher's next write
    // of the slot races the sample's read, which loom reports), and nothing is lost.
    overwrite_accounts_for_every_message(0, true, |m, cursor| m.try_recv(0, cursor));
}

/// Capacity 1, 3 messages, overwrite, read by `receive` while they are published and after:
/// every message is received intact or counted as lagged, sequence numbers increase, and the
/// newest message is always readable.
fn overwrite_accounts_for_every_message(
    inline: u32,
    batched: bool,
    receive: fn(&Model, &mut u64) -> Received,
) {
    model(move || {
        let m = Model::with_inline(1, 1, Overflow::Overwrite, inline);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        const N: u64 = 3;
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                if batched {
                    // Messages 0 and 1 in one chunk, then 2: both chunks evict without an RMW.
                    m.send_batch(&mut hint, &[value_of(0), value_of(1)], false);
                    m.send_batch(&mut hint, &[value_of(2)], false);
                } else {
                    for seq in 0..N {
                        m.send(&mut hint, value_of(seq));
                    }
                }
            })
        };
        let (mut received, mut lagged, mut last) = (0u64, 0u64, None);
        let mut take = |m: &Model, cursor: &mut u64| match receive(m, cursor) {
            Some(Ok((seq, v))) => {
                assert_eq!(v, value_of(seq), "a message holds its own value");
                assert!(last.is_none_or(|l| seq > l), "sequence numbers increase");
                last = Some(seq);
                received += 1;
                true
            }
            Some(Err(s)) => {
                lagged += s;
                true
            }
            None => false,
        };
        // Drain concurrently with the publisher, then after it finishes.
        for _ in 0..2 {
            if !take(&m, &mut cursor) {
                thread::yield_now();
            }
        }
        p.join().unwrap();
        while take(&m, &mut cursor) {}
        assert_eq!(
            received + lagged,
            N,
            "every message is either received or reported as lagged"
        );
        assert_eq!(last, Some(N - 1), "the newest message is always readable");
    });
}

#[test]
fn blocked_subscriber_is_always_woken() {
    model(|| {
        let m = Model::new(2, 1, Overflow::Overwrite);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                m.send(&mut hint, value_of(0));
            })
        };
        // No deadline and no periodic check: a lost wake-up deadlocks, and loom reports it.
        let ready = m
            .ring()
            .wait_for_message(cursor, &m.futex, Deadline::never(), None, || true);
        assert!(ready);
        assert_eq!(m.try_recv(0, &mut cursor), Some(Ok((0, value_of(0)))));
        p.join().unwrap();
    });
}

#[test]
fn backpressure_loses_nothing_and_wakes_the_publisher() {
    model(|| {
        let m = Model::new(1, 1, Overflow::BackPressure);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        const N: u64 = 2;
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                for seq in 0..N {
                    // Blocks (on the mocked futex) until the subscriber made room.
                    assert!(m
                        .ring()
                        .wait_for_space(&m.futex, Deadline::never(), None, || {}));
                    m.send(&mut hint, value_of(seq));
                }
            })
        };
        for seq in 0..N {
            assert!(m
                .ring()
                .wait_for_message(cursor, &m.futex, Deadline::never(), None, || true));
            assert_eq!(
                m.try_recv(0, &mut cursor),
                Some(Ok((seq, value_of(seq)))),
                "no loss, no lag"
            );
        }
        p.join().unwrap();
    });
}

#[test]
fn held_sample_is_never_overwritten() {
    model(|| {
        let m = Model::new(1, 1, Overflow::Overwrite);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        let mut hint = 0;
        m.send(&mut hint, value_of(0));
        let Acquired::Message { slot, .. } =
            m.ring().try_acquire(0, &mut cursor, &m.futex).unwrap()
        else {
            panic!("message 0 is there")
        };
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                for seq in 1..3 {
                    m.send(&mut hint, value_of(seq));
                }
            })
        };
        // Reading while the publisher runs: loom flags a race if it wrote our slot.
        assert_eq!(
            m.data[slot as usize].with(|p| {
                // SAFETY: the cell's pointer is valid in the closure; whether the access races
                // another is what the model checks (the slot is this thread's loan or hold).
                unsafe { *p }
            }),
            value_of(0)
        );
        m.ring().release(0, slot);
        p.join().unwrap();
    });
}

/// A publisher dies after each possible step of a publish; a successor repairs the ring and
/// publishes; a subscriber running throughout never hangs, never reads a torn message, and gets
/// the successor's message.
#[test]
fn publisher_stopping_mid_write_is_repaired() {
    for stop_after in 0..3u8 {
        model(move || {
            let m = Model::new(3, 1, Overflow::Overwrite);
            let mut cursor = m.ring().join_subscriber(0, 1, 0);
            let p = {
                let m = m.clone();
                thread::spawn(move || {
                    let mut hint = 0;
                    m.send(&mut hint, value_of(0));
                    let slot = m.ring().loan(0, &mut hint).unwrap();
                    m.data[slot as usize].with_mut(|p| {
                        // SAFETY: the cell's pointer is valid in the closure; whether the access races
                        // another is what the model checks (the slot is this thread's loan or hold).
                        unsafe { *p = value_of(1) }
                    });
                    // SAFETY: the only publisher.
                    let done = unsafe { m.ring().publish_steps(slot, stop_after, None) };
                    assert!(done.is_none(), "stopped early");
                    // ... the process dies here. Its successor (with publish rights now):
                    m.ring().reclaim_publisher(0);
                    m.spare.store(NO_SPARE, Ordering::Relaxed); // the dead one's, now freed
                                                                // SAFETY: the dead publisher publishes no more; we are the only publisher.
                    unsafe { m.ring().repair(&m.futex) };
                    let mut hint = 0;
                    m.send(&mut hint, value_of(99));
                })
            };
            // Read while the crash and the repair happen, then after.
            let mut seen = Vec::new();
            let mut check = |r: Option<Result<(u64, u64), u64>>| match r {
                Some(Ok((seq, v))) => {
                    assert!(
                        v == value_of(seq) || v == value_of(99),
                        "torn or misplaced read"
                    );
                    seen.push(v);
                }
                Some(Err(_)) => panic!("capacity 3 cannot lag with 3 sequence numbers"),
                None => {}
            };
            check(m.try_recv(0, &mut cursor));
            p.join().unwrap();
            for _ in 0..3 {
                check(m.try_recv(0, &mut cursor));
            }
            assert_eq!(
                seen.last(),
                Some(&value_of(99)),
                "the successor's message arrives"
            );
        });
    }
}

/// A publisher withdraws its message 0 (`retire`, what an array pool does to reuse the block of
/// an unread message) while a subscriber may be taking it, then reuses the freed slot for
/// message 1. The subscriber either gets message 0 intact (and the publisher then must not
/// have freed its slot: loom flags the rewrite as a race otherwise) or is told it lagged by one;
/// it always gets message 1 intact.
#[test]
fn retired_message_is_either_read_intact_or_reported_as_lag() {
    model(|| {
        let m = Model::new(2, 1, Overflow::Overwrite);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                let slot = m.ring().loan(0, &mut hint).unwrap();
                m.data[slot as usize].with_mut(|p| {
                    // SAFETY: the cell's pointer is valid in the closure; whether the access races
                    // another is what the model checks (the slot is this thread's loan or hold).
                    unsafe { *p = value_of(0) }
                });
                // SAFETY: the only publishing thread has publish rights.
                let (seq, _) = unsafe { m.ring().publish(slot, &m.futex) };
                // SAFETY: as above.
                let freed = unsafe { m.ring().retire(seq, slot) };
                if freed {
                    assert!(m.ring().slot_is_free(slot));
                }
                // Reuse the same slot if it is free: the case a stale reader must catch.
                hint = slot;
                m.send(&mut hint, value_of(1));
            })
        };
        let (mut got, mut lagged) = (Vec::new(), 0);
        while !got.contains(&1) {
            match m.try_recv(0, &mut cursor) {
                Some(Ok((seq, v))) => {
                    assert_eq!(v, value_of(seq), "a sample must hold its own message");
                    got.push(seq);
                }
                Some(Err(skipped)) => lagged += skipped,
                None => thread::yield_now(),
            }
        }
        assert_eq!(got.len() as u64 + lagged, 2, "got {got:?}, lagged {lagged}");
        p.join().unwrap();
    });
}

#[test]
fn copied_message_is_intact_or_reported_as_lag() {
    // Capacity 1: every publish after the first evicts the message the reader may be copying,
    // and its slot can be loaned and rewritten at once. A copy that passed the check must be
    // all of the message its sequence number names (`try_copy` also asserts both words agree).
    overwrite_accounts_for_every_message(0, false, |m, cursor| m.try_copy(0, cursor, true));
}

#[test]
fn message_copied_from_its_entry_is_intact_or_reported_as_lag() {
    // As above, the copy taken from the words of the entry itself: every publish rewrites the
    // one entry the reader copies from, seqlock style; a copy that passed the check is one
    // message's two words.
    overwrite_accounts_for_every_message(16, false, |m, cursor| m.try_copy_inline(0, cursor));
}

#[test]
fn batched_copies_under_backpressure_lose_nothing_and_wake_the_publisher() {
    // The reader copies without holding and stores its cursor once per batch; the publisher,
    // held back by that cursor, must still be woken, and nothing may be lost or lag.
    model(|| {
        let m = Model::new(1, 1, Overflow::BackPressure);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        const N: u64 = 2;
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                for seq in 0..N {
                    assert!(m
                        .ring()
                        .wait_for_space(&m.futex, Deadline::never(), None, || {}));
                    m.send(&mut hint, value_of(seq));
                }
            })
        };
        let mut next = 0;
        while next < N {
            assert!(m
                .ring()
                .wait_for_message(cursor, &m.futex, Deadline::never(), None, || true));
            // One batch: everything there is now, then one cursor store.
            let mut first = true;
            while let Some(r) = m.try_copy(0, &mut cursor, first) {
                assert_eq!(r, Ok((next, value_of(next))), "no loss, no lag");
                next += 1;
                first = false;
            }
            m.ring().commit_cursor(0, cursor, &m.futex);
        }
        p.join().unwrap();
    });
}

#[test]
fn a_batch_of_quiet_publishes_and_one_wake_wakes_the_subscriber() {
    // Two publishes with no wake each, then one: a subscriber asleep on the first message, or
    // on the second after taking the first, is woken (no deadline: a lost wake-up deadlocks).
    model(|| {
        let m = Model::new(2, 1, Overflow::Overwrite);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                m.send_batch(&mut hint, &[value_of(0), value_of(1)], false);
            })
        };
        for seq in 0..2 {
            assert!(m
                .ring()
                .wait_for_message(cursor, &m.futex, Deadline::never(), None, || true));
            assert_eq!(
                m.try_copy(0, &mut cursor, true),
                Some(Ok((seq, value_of(seq))))
            );
        }
        p.join().unwrap();
    });
}

#[test]
fn a_batch_waiting_for_room_wakes_the_subscriber_first() {
    // Capacity 1, back-pressure: the second publish of a quiet batch must wait for room, which
    // the subscriber makes only once woken for the first message. No deadlines: a batch that
    // waited without waking deadlocks, and loom reports it.
    model(|| {
        let m = Model::new(1, 1, Overflow::BackPressure);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                m.send_batch(&mut hint, &[value_of(0), value_of(1)], true);
            })
        };
        for seq in 0..2 {
            assert!(m
                .ring()
                .wait_for_message(cursor, &m.futex, Deadline::never(), None, || true));
            assert_eq!(
                m.try_copy(0, &mut cursor, true),
                Some(Ok((seq, value_of(seq))))
            );
            m.ring().commit_cursor(0, cursor, &m.futex);
        }
        p.join().unwrap();
    });
}

impl Model {
    /// A run of up to two copying reads ([`Ring::read_run`]) from the slots' two words: the
    /// `(seq, value)` of each copy it kept (each checked to be of one message).
    fn read_run(&self, cursor: &mut u64) -> Vec<(u64, u64)> {
        let start = *cursor;
        let mut copies = [(0, 0); 2];
        let n = self.ring().read_run(cursor, 2, |i, slot, _| {
            let [a, b] = &self.words[slot as usize];
            copies[i] = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
        });
        assert_eq!(*cursor, start + n as u64, "the cursor moves past the run");
        (0..n)
            .map(|i| {
                let (a, b) = copies[i];
                assert_eq!(a, b, "a copy that passed the check is of one message");
                (start + i as u64, a)
            })
            .collect()
    }
}

#[test]
fn runs_of_copies_are_intact_or_end_before_a_change() {
    // Capacity 2, three messages, overwrite: runs of two copies race publishes that rewrite
    // both entries and reuse their slots. Every copy a run keeps holds its own message; what
    // ends a run goes through `try_read` (a lag, or nothing yet), and every message is either
    // copied or counted as lagged.
    model(|| {
        let m = Model::new(2, 1, Overflow::Overwrite);
        let mut cursor = m.ring().join_subscriber(0, 1, 0);
        const N: u64 = 3;
        let p = {
            let m = m.clone();
            thread::spawn(move || {
                let mut hint = 0;
                for seq in 0..N {
                    m.send(&mut hint, value_of(seq));
                }
            })
        };
        let (mut received, mut lagged, mut last) = (0u64, 0u64, None::<u64>);
        let mut take = |m: &Model, cursor: &mut u64| {
            let run = m.read_run(cursor);
            for &(seq, v) in &run {
                assert_eq!(v, value_of(seq), "a message holds its own value");
                assert!(last.is_none_or(|l| seq > l), "sequence numbers increase");
                last = Some(seq);
                received += 1;
            }
            if !run.is_empty() {
                return true;
            }
            match m.try_copy(0, cursor, true) {
                Some(Ok((seq, v))) => {
                    assert_eq!(v, value_of(seq), "a message holds its own value");
                    assert!(last.is_none_or(|l| seq > l), "sequence numbers increase");
                    last = Some(seq);
                    received += 1;
                    true
                }
                Some(Err(s)) => {
                    lagged += s;
                    true
                }
                None => false,
            }
        };
        for _ in 0..2 {
            if !take(&m, &mut cursor) {
                thread::yield_now();
            }
        }
        p.join().unwrap();
        while take(&m, &mut cursor) {}
        assert_eq!(received + lagged, N, "every message is copied or lagged");
        assert_eq!(last, Some(N - 1), "the newest message is always readable");
    });
}

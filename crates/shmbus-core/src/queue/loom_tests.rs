//! Loom models of the queue protocol.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p shmbus-core --lib --release loom_tests` (what
//! `scripts/test` does). Each model runs the real protocol code ([`QueueCore`]) on heap memory,
//! with loom's atomics, the futex mock, and a mock of the robust mutex: a holder that "dies"
//! leaves the lock in the owner-died state, as the kernel does, and the next locker gets
//! [`Acquired::OwnerDied`]. A thread "dies" at a chosen [`crash_point`] (every store the
//! protocol makes under the lock, and the steps between lock holds, are crash points): it
//! unwinds out of the protocol without unlocking, and the model then reclaims its row as the
//! lease of a dead process would let a survivor do. Item payloads live in loom `UnsafeCell`s,
//! so a slot read while another thread writes it is reported as a data race.

use std::cell::Cell;
use std::time::Duration;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::protocol::{ProtocolLock, QueueConfig, QueueCore, QueueError, QueueWords, SlotEntry};
use crate::futex::MockFutex;
use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use crate::sync::Holders;
use crate::sync::{Acquired, LockError};
use crate::time::Deadline;
use crate::wire::queue::counter;

loom::thread_local! {
    /// Crash points left before this thread dies (`None`: it does not).
    static COUNTDOWN: Cell<Option<u32>> = Cell::new(None);
    /// Set while the thread unwinds from its death: the lock is left owner-died.
    static DYING: Cell<bool> = Cell::new(false);
}

/// The unwinding payload of a thread that dies.
struct Died;

/// Called by the protocol after every store under the lock (and by the models between lock
/// holds): counts down, and at zero the thread dies.
pub(crate) fn crash_point() {
    let die = COUNTDOWN.with(|c| match c.get() {
        Some(0) => true,
        Some(n) => {
            c.set(Some(n - 1));
            false
        }
        None => false,
    });
    if die {
        DYING.with(|d| d.set(true));
        std::panic::resume_unwind(Box::new(Died));
    }
}

/// Runs `f` on this thread with death at crash point `at` (`None`: never); `true` if it died.
fn mortal(at: Option<u32>, f: impl FnOnce()) -> bool {
    COUNTDOWN.with(|c| c.set(at));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    COUNTDOWN.with(|c| c.set(None));
    match r {
        Ok(()) => false,
        Err(p) if p.is::<Died>() => true,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The robust mutex as loom sees it: held or not, and whether its last holder died. Lockers
/// block on a condition variable rather than spin, which keeps the models small.
#[derive(Default)]
struct MockRobust {
    state: loom::sync::Mutex<(bool, bool)>,
    cond: loom::sync::Condvar,
}

impl ProtocolLock for MockRobust {
    fn lock(&self, _h: &dyn Holders, _timeout: Option<Duration>) -> Result<Acquired, LockError> {
        let mut g = self.state.lock().unwrap();
        while g.0 {
            g = self.cond.wait(g).unwrap();
        }
        g.0 = true;
        Ok(if std::mem::take(&mut g.1) {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        })
    }
    unsafe fn unlock(&self, _h: &dyn Holders) {
        let dying = DYING.with(|d| d.get());
        let mut g = self.state.lock().unwrap();
        *g = (false, dying);
        self.cond.notify_one();
    }
    unsafe fn make_consistent(&self) {}
}

/// A queue's memory on the heap.
struct HeapQueue {
    core: QueueCore<MockRobust>,
    _words: Box<QueueWords>,
    slots: Box<[SlotEntry]>,
    _ready: Box<[AtomicU32]>,
    free: Box<[AtomicU32]>,
    _rows: Box<[AtomicU32]>,
    counters: Box<[AtomicU64]>,
    _lock: Box<MockRobust>,
    data: Vec<UnsafeCell<u64>>,
    futex: MockFutex,
}

// SAFETY: the boxes are owned and only reached through the protocol's atomics (the data cells
// through loom's checked `UnsafeCell`).
unsafe impl Send for HeapQueue {}
// SAFETY: as above.
unsafe impl Sync for HeapQueue {}

impl HeapQueue {
    fn new(capacity: u32, rows: u32, acknowledged: bool, max_deliveries: u32) -> Arc<HeapQueue> {
        let cfg = QueueConfig {
            capacity,
            slot_size: 64,
            rows,
            acknowledged,
            max_deliveries,
        };
        let words = Box::new(QueueWords::new());
        words
            .free_tail
            .store(u64::from(capacity), Ordering::Relaxed);
        let slots: Box<[SlotEntry]> = (0..capacity)
            .map(|_| SlotEntry {
                word: AtomicU64::new(0),
                seq: AtomicU64::new(0),
            })
            .collect();
        let ready: Box<[AtomicU32]> = (0..capacity).map(|_| AtomicU32::new(0)).collect();
        let free: Box<[AtomicU32]> = (0..capacity).map(AtomicU32::new).collect();
        let rows_b: Box<[AtomicU32]> = (0..rows).map(|_| AtomicU32::new(1)).collect();
        let counters: Box<[AtomicU64]> = (0..8).map(|_| AtomicU64::new(0)).collect();
        let lock = Box::<MockRobust>::default();
        // SAFETY: every pointer addresses a live boxed part of the right length, owned by the
        // `HeapQueue` that owns the view too.
        let core = unsafe {
            QueueCore::from_raw(
                std::ptr::NonNull::from(&*words),
                std::ptr::NonNull::from(&slots[0]),
                std::ptr::NonNull::from(&ready[0]),
                std::ptr::NonNull::from(&free[0]),
                std::ptr::NonNull::from(&rows_b[0]),
                std::ptr::NonNull::from(&counters[0]),
                std::ptr::NonNull::from(&*lock),
                cfg,
            )
        };
        Arc::new(HeapQueue {
            core,
            _words: words,
            slots,
            _ready: ready,
            free,
            _rows: rows_b,
            counters,
            _lock: lock,
            data: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
            futex: MockFutex::default(),
        })
    }

    /// Reserve, write `v`, commit (crash points between the phases too).
    fn put(&self, row: u32, v: u64) {
        let s = self
            .core
            .reserve(row, Deadline::never(), &self.futex, || {})
            .unwrap();
        crash_point();
        // SAFETY: the cell's pointer is valid in the closure; whether the access races another
        // is what the model checks (the slot is this row's reservation).
        self.data[s as usize].with_mut(|p| unsafe { *p = v });
        crash_point();
        self.core.commit(row, s, &self.futex).unwrap();
    }

    /// A non-blocking take and read: `Some((value, deliveries, slot))`.
    fn try_take(&self, row: u32) -> Option<(u64, u32, u32)> {
        let t = self.core.try_take(row).unwrap()?;
        crash_point();
        // SAFETY: as in `put` (the slot is this row's until it finishes or refuses it).
        let v = self.data[t.slot as usize].with(|p| unsafe { *p });
        crash_point();
        Some((v, t.deliveries, t.slot))
    }

    fn counter(&self, i: usize) -> u64 {
        self.counters[i].load(Ordering::Relaxed)
    }

    /// Takes and acks everything left (as a survivor would); returns the values.
    fn drain(&self, row: u32) -> Vec<u64> {
        let mut got = Vec::new();
        while let Some((v, _, s)) = self.try_take(row) {
            self.core.finish(row, s, &self.futex).unwrap();
            got.push(v);
        }
        got
    }

    /// With everyone done: every slot is free and in the free ring exactly once, nothing ready.
    fn assert_all_free(&self) {
        // A survivor's next lock repairs what a dead holder left.
        drop(self.core.locked(None).unwrap());
        assert_eq!(self.core.len(), 0);
        let w = self.core.words();
        let (fh, ft) = (
            w.free_head.load(Ordering::Relaxed),
            w.free_tail.load(Ordering::Relaxed),
        );
        let cap = self.slots.len() as u64;
        assert_eq!(ft.wrapping_sub(fh), cap, "every slot is in the free ring");
        let mut seen = vec![false; cap as usize];
        for n in 0..cap {
            let i = self.free[(fh.wrapping_add(n) % cap) as usize].load(Ordering::Relaxed);
            assert!(!seen[i as usize], "slot {i} twice in the free ring");
            seen[i as usize] = true;
        }
        for s in self.slots.iter() {
            assert_eq!(
                s.word.load(Ordering::Relaxed) & 0xff,
                0,
                "every slot is free"
            );
        }
    }
}

/// Runs `f` under loom (preemption bound 2 unless the environment says otherwise).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Crash points of a take, a read and an ack, plus a few: every case from "dies before it
/// begins" to "never dies".
const GET_STEPS: u32 = 13;

/// One producer putting two items through a queue of one slot, two consumers blocking on it:
/// every item is delivered to exactly one consumer, intact, and nobody blocks for good (blocking
/// take and reserve, on the futex mock: a lost wake-up is a loom deadlock).
#[test]
fn each_item_goes_to_exactly_one_consumer() {
    model(|| {
        let q = HeapQueue::new(1, 3, false, 1);
        let producer = {
            let q = q.clone();
            thread::spawn(move || {
                q.put(0, 100);
                q.put(0, 101);
            })
        };
        let consumers: Vec<_> = (1..3u32)
            .map(|c| {
                let q = q.clone();
                thread::spawn(move || {
                    let t = q.core.take(c, Deadline::never(), &q.futex, || {}).unwrap();
                    // SAFETY: as in `HeapQueue::put`.
                    let v = q.data[t.slot as usize].with(|p| unsafe { *p });
                    q.core.finish(c, t.slot, &q.futex).unwrap();
                    v
                })
            })
            .collect();
        producer.join().unwrap();
        let mut got: Vec<u64> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![100, 101]);
        assert_eq!((q.counter(counter::PUT), q.counter(counter::DONE)), (2, 2));
        q.assert_all_free();
    });
}

/// An acknowledged-mode consumer killed after each step of a take, a read and an ack, while
/// another consumer takes concurrently: the item is acknowledged exactly once in the end
/// (redelivered with a higher delivery count if the first consumer died before its ack
/// committed), the counters are exact, and every slot comes back.
#[test]
fn acknowledged_consumer_killed_at_every_step() {
    for at in (0..GET_STEPS).map(Some).chain([None]) {
        model(move || {
            let q = HeapQueue::new(2, 3, true, 5);
            q.put(2, 7);
            let a = {
                let q = q.clone();
                thread::spawn(move || {
                    let mut acked = false;
                    let died = mortal(at, || {
                        if let Some((v, d, s)) = q.try_take(0) {
                            assert_eq!((v, d), (7, 1));
                            crash_point();
                            q.core.finish(0, s, &q.futex).unwrap();
                            acked = true;
                        }
                    });
                    (died, acked)
                })
            };
            let b = {
                let q = q.clone();
                thread::spawn(move || {
                    let got = q.try_take(1);
                    if let Some((v, _, s)) = got {
                        assert_eq!(v, 7);
                        q.core.finish(1, s, &q.futex).unwrap();
                    }
                    got.is_some()
                })
            };
            let (died, a_acked) = a.join().unwrap();
            let b_acked = b.join().unwrap();
            if died {
                // The survivor took the dead one's lease: its row is reclaimed.
                q.core.reclaim_row(0, &q.futex).unwrap();
            }
            let rest = q.drain(1);
            let acks = u32::from(a_acked) + u32::from(b_acked) + rest.len() as u32;
            assert!(acks == 1 || (died && acks == 0), "acks seen: {acks}");
            assert_eq!(
                q.counter(counter::DONE),
                1,
                "acknowledged exactly once (died={died})"
            );
            assert_eq!(q.counter(counter::PUT), 1);
            assert_eq!(q.counter(counter::DEAD_LETTERED), 0);
            assert_eq!(
                q.counter(counter::TAKEN),
                1 + q.counter(counter::REDELIVERED),
                "every redelivery is one more delivery"
            );
            q.assert_all_free();
        });
    }
}

/// An at-most-once consumer killed after each step: the item is done once, or lost once (and
/// counted), never both, never twice.
#[test]
fn at_most_once_consumer_killed_at_every_step() {
    for at in (0..GET_STEPS).map(Some).chain([None]) {
        model(move || {
            let q = HeapQueue::new(2, 3, false, 1);
            q.put(2, 7);
            let a = {
                let q = q.clone();
                thread::spawn(move || {
                    let mut done = false;
                    let died = mortal(at, || {
                        if let Some((_, _, s)) = q.try_take(0) {
                            q.core.finish(0, s, &q.futex).unwrap();
                            done = true;
                        }
                    });
                    (died, done)
                })
            };
            let b_done = {
                let q = q.clone();
                thread::spawn(move || {
                    let got = q.try_take(1);
                    if let Some((_, _, s)) = got {
                        q.core.finish(1, s, &q.futex).unwrap();
                    }
                    got.is_some()
                })
            }
            .join()
            .unwrap();
            let (died, a_done) = a.join().unwrap();
            if died {
                q.core.reclaim_row(0, &q.futex).unwrap();
            }
            let rest = q.drain(1).len() as u64;
            let done = u64::from(a_done) + u64::from(b_done) + rest;
            let lost = q.counter(counter::LOST);
            assert!(done <= 1, "delivered at most once");
            assert_eq!(
                q.counter(counter::DONE) + lost,
                1,
                "done or lost, exactly (died={died})"
            );
            assert!(done == 1 || died, "only a death loses an item");
            q.assert_all_free();
        });
    }
}

/// A producer killed after each step of a reserve, write and commit, while a consumer waits:
/// the item is either in line (and delivered once) or its reservation is freed; the
/// consumer never blocks for good (it uses a non-blocking take here, then drains).
#[test]
fn producer_killed_at_every_step() {
    for at in (0..10).map(Some).chain([None]) {
        model(move || {
            let q = HeapQueue::new(1, 2, true, 3);
            let p = {
                let q = q.clone();
                thread::spawn(move || mortal(at, || q.put(0, 9)))
            };
            let c = {
                let q = q.clone();
                thread::spawn(move || {
                    let got = q.try_take(1);
                    if let Some((v, _, s)) = got {
                        assert_eq!(v, 9);
                        q.core.finish(1, s, &q.futex).unwrap();
                    }
                    u64::from(got.is_some())
                })
            };
            let died = p.join().unwrap();
            let early = c.join().unwrap();
            if died {
                q.core.reclaim_row(0, &q.futex).unwrap();
            }
            let got = early + q.drain(1).len() as u64;
            assert_eq!(
                got,
                q.counter(counter::PUT),
                "what was put is delivered once"
            );
            assert!(died || got == 1);
            assert_eq!(q.counter(counter::DONE), got);
            q.assert_all_free();
        });
    }
}

/// A refused item comes back with a higher delivery count and is dead-lettered at the limit.
#[test]
fn refused_items_are_redelivered_then_dead_lettered() {
    model(|| {
        let q = HeapQueue::new(1, 2, true, 2);
        q.put(0, 5);
        let (_, d, s) = q.try_take(1).unwrap();
        assert_eq!(d, 1);
        let closer = {
            let q = q.clone();
            thread::spawn(move || q.core.close(&q.futex).unwrap())
        };
        q.core.refuse(1, s, &q.futex).unwrap();
        let (_, d, s) = q.try_take(1).unwrap();
        assert_eq!(d, 2);
        let r = q.core.refuse(1, s, &q.futex).unwrap();
        assert_eq!(r.dead_lettered, 1);
        closer.join().unwrap();
        assert!(matches!(q.core.try_take(1), Err(QueueError::Closed)));
        assert_eq!(q.counter(counter::DEAD_LETTERED), 1);
        q.assert_all_free();
    });
}

impl HeapQueue {
    /// One-hold put of `v`.
    fn put_inline(&self, row: u32, v: u64) -> bool {
        let mut write = |s: u32| {
            // SAFETY: as in `put` (the slot is this row's reservation, under the lock).
            self.data[s as usize].with_mut(|p| unsafe { *p = v });
        };
        self.core
            .try_put_inline(row, &mut write, &self.futex)
            .unwrap()
    }

    /// One-hold get: the value, if any.
    fn get_inline(&self, row: u32) -> Option<u64> {
        let mut got = None;
        let mut read = |t: super::protocol::Taken| {
            // SAFETY: as in `put` (the slot is this row's, under the lock).
            got = Some(self.data[t.slot as usize].with(|p| unsafe { *p }));
        };
        self.core
            .try_get_inline(row, &mut read, &self.futex)
            .unwrap();
        got
    }
}

/// The one-hold put and get (small items), each participant killed at every step: exact
/// accounting, nothing stuck, in both modes.
#[test]
fn inline_put_and_get_killed_at_every_step() {
    for acknowledged in [false, true] {
        for at in (0..9).map(Some).chain([None]) {
            model(move || {
                let q = HeapQueue::new(2, 3, acknowledged, 5);
                q.put(2, 1);
                let p = {
                    let q = q.clone();
                    thread::spawn(move || mortal(at, || assert!(q.put_inline(0, 2))))
                };
                let c = {
                    let q = q.clone();
                    thread::spawn(move || {
                        let mut got = None;
                        let died = mortal(at, || got = q.get_inline(1));
                        (died, got)
                    })
                };
                let p_died = p.join().unwrap();
                let (c_died, c_got) = c.join().unwrap();
                if p_died {
                    q.core.reclaim_row(0, &q.futex).unwrap();
                }
                if c_died {
                    q.core.reclaim_row(1, &q.futex).unwrap();
                }
                let mut rest = 0;
                while q.get_inline(2).is_some() {
                    rest += 1;
                }
                let put = q.counter(counter::PUT);
                let (done, lost) = (q.counter(counter::DONE), q.counter(counter::LOST));
                assert!(put == 2 || (p_died && put == 1));
                assert_eq!(done + lost, put, "every item put is done or lost, once");
                assert!(lost == 0 || (c_died && !acknowledged));
                assert!(u64::from(c_got.is_some()) + rest <= done);
                q.assert_all_free();
            });
        }
    }
}

//! Loom models of the shared state's seqlock over two buffers: a reader never returns a torn
//! state, versions only go forward, and a writer stopped after any word of its write leaves the
//! last complete version readable.

use std::cell::Cell;

use loom::sync::Arc;
use loom::thread;

use super::protocol::{Buffer, Seqlock};
use crate::primitive::AtomicU64;

loom::thread_local! {
    static COUNTDOWN: Cell<Option<u32>> = Cell::new(None);
}

struct Died;

/// Called after every word a writer stores: at zero the writer dies.
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
        std::panic::resume_unwind(Box::new(Died));
    }
}

struct Mem {
    current: AtomicU64,
    lens: [AtomicU64; 2],
    words: [Vec<AtomicU64>; 2],
}

impl Mem {
    fn new() -> Arc<Mem> {
        Arc::new(Mem {
            current: AtomicU64::new(0),
            lens: [AtomicU64::new(16), AtomicU64::new(0)],
            words: [
                (0..2).map(|_| AtomicU64::new(0)).collect(),
                (0..2).map(|_| AtomicU64::new(0)).collect(),
            ],
        })
    }

    fn lock(&self) -> Seqlock<'_> {
        Seqlock {
            current: &self.current,
            buffers: [
                Buffer {
                    len: &self.lens[0],
                    words: &self.words[0],
                },
                Buffer {
                    len: &self.lens[1],
                    words: &self.words[1],
                },
            ],
        }
    }
}

/// State `v` is the 16 bytes of `[v, v]`.
fn state(v: u64) -> Vec<u8> {
    [v.to_le_bytes(), v.to_le_bytes()].concat()
}

#[test]
fn readers_never_see_a_torn_state_even_when_a_writer_dies() {
    for die_at in [Some(0), Some(1), Some(2), Some(3), None] {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(move || {
            let m = Mem::new();
            let writer = {
                let m = m.clone();
                thread::spawn(move || {
                    COUNTDOWN.with(|c| c.set(die_at));
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        m.lock().write(&state(1));
                        m.lock().write(&state(2));
                    }));
                    assert!(r.is_ok() || r.unwrap_err().is::<Died>());
                })
            };
            let mut out = Vec::new();
            let mut last = 0;
            for _ in 0..2 {
                if let Ok(v) = m.lock().read(&mut out, 4) {
                    assert_eq!(out, state(v), "version {v} reads as its own state");
                    assert!(v >= last);
                    last = v;
                }
            }
            writer.join().unwrap();
            let v = m
                .lock()
                .read(&mut out, 1)
                .expect("no writer: the first try succeeds");
            assert_eq!(out, state(v));
            let expect = match die_at {
                Some(0) | Some(1) => 0,
                Some(2) | Some(3) => 1,
                _ => 2,
            };
            assert_eq!(v, expect, "the last complete version (died at {die_at:?})");
        });
    }
}

//! Peer roles for a small `/dev/shm`: fill it, check that every creation is refused with
//! `OutOfSpace` (never a `SIGBUS`), and that what exists keeps working.
//!
//! The role runs in a private tmpfs (see `ShmEnv` in `shmbus_tests`); every step prints one
//! line, which the test checks.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use shmbus::{
    ArrayError, ArrayPublisher, ArraySendFailure, ArraySubscriber, Barrier, Event, EventMode,
    Mutex, OpenError, PoolLoanError, Publisher, QueueBuilder, RecvError, Semaphore, SerdeQueue,
    Shared, SharedArray, Subscriber, Topic, Value,
};
use shmbus_core::segment::{SegmentError, SHM_DIR};
use shmbus_tests::{
    check_frame, fill_frame, open_error_code, segment_error_code, FrameMeta, Msg, Rec, Tally,
};

use super::Fail;

#[derive(Args)]
pub(crate) struct SmallShmArgs {
    /// Prefix of every name this role makes.
    #[arg(long)]
    prefix: String,
}

#[derive(Args)]
pub(crate) struct FewInodesArgs {
    /// Prefix of every name this role makes.
    #[arg(long)]
    prefix: String,
    /// Give up (and fail) after this many creations.
    #[arg(long, default_value_t = 4096)]
    max: u32,
}

/// Bytes free in the shared-memory directory.
fn free_bytes() -> u64 {
    rustix::fs::statvfs(SHM_DIR).map_or(0, |st| st.f_bavail * st.f_frsize)
}

/// Whether the file of `name` exists in the shared-memory directory.
fn file_exists(name: &str) -> bool {
    Path::new(SHM_DIR)
        .join(format!("{}{name}", shmbus_core::name::FILE_PREFIX))
        .exists()
}

/// The code and, for `OutOfSpace`, the bytes asked for, of a segment error.
fn segment_outcome(e: &SegmentError) -> (&'static str, u64) {
    match e {
        SegmentError::OutOfSpace { requested, .. } => ("out-of-space", *requested),
        e => (segment_error_code(e), 0),
    }
}

fn open_outcome(e: &OpenError) -> (&'static str, u64) {
    match e.segment_error() {
        Some(s) => segment_outcome(s),
        None => (open_error_code(e), 0),
    }
}

fn array_outcome(e: &ArrayError) -> (&'static str, u64) {
    match e {
        ArrayError::Segment(s) => segment_outcome(s),
        _ => ("array-other", 0),
    }
}

fn pool_outcome(e: &PoolLoanError) -> (&'static str, u64) {
    match e {
        PoolLoanError::Segment(s) => segment_outcome(s),
        PoolLoanError::Exhausted { .. } => ("pool-exhausted", 0),
        _ => ("pool-other", 0),
    }
}

/// Frames of the array topic: `FRAME` bytes of `u8`.
const FRAME: usize = 256 << 10;

/// The objects made while there was room, all of them used again once `/dev/shm` is full.
struct Existing {
    publisher: Publisher<Msg>,
    subscriber: Subscriber<Msg>,
    queue: shmbus::Queue<u64>,
    serde_queue: SerdeQueue<Rec>,
    value: Value<u64>,
    shared: Shared<Tally>,
    array: SharedArray<u32>,
    frames: ArrayPublisher<FrameMeta>,
    frames_sub: ArraySubscriber<FrameMeta>,
    next_frame: u64,
    next_msg: u64,
}

/// The pattern of element `i` of the array, generation `g`.
fn pattern(g: u32, i: usize) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761) ^ g
}

impl Existing {
    fn make(prefix: &str) -> Result<Existing, Fail> {
        let name = |what: &str| format!("{prefix}-{what}");
        let publisher = Topic::builder(&name("topic")).publisher::<Msg>()?;
        let subscriber = Topic::builder(&name("topic")).subscriber::<Msg>()?;
        let queue = QueueBuilder::new(&name("queue"))
            .capacity(64)
            .open::<u64>()?;
        let serde_queue = QueueBuilder::new(&name("squeue"))
            .capacity(16)
            .open_serde::<Rec>()?;
        let value = Value::open_or_create(&name("value"), 7u64)?;
        let shared = Shared::open_or_create(&name("shared"), 4096, &Tally::default())?;
        let array = SharedArray::<u32>::options()
            .scoped()
            .create(&name("array"), &[256, 1024])
            .map_err(|e| Fail::new(array_outcome(&e).0, e))?;
        let frames = Topic::builder(&name("frames"))
            .capacity(2)
            .array_publisher::<FrameMeta>()?;
        let frames_sub = Topic::builder(&name("frames")).array_subscriber::<FrameMeta>()?;
        let mut e = Existing {
            publisher,
            subscriber,
            queue,
            serde_queue,
            value,
            shared,
            array,
            frames,
            frames_sub,
            next_frame: 0,
            next_msg: 0,
        };
        e.put_items(0)?;
        e.shared
            .update(Tally::bump)
            .map_err(|e| Fail::new("shared", e))?;
        for i in 0..e.array.len() {
            e.array
                .set(i, pattern(1, i))
                .map_err(|e| Fail::new("array", e))?;
        }
        // The pool grows to one segment of 256 KiB blocks, which later frames reuse.
        for _ in 0..4 {
            e.frame_round_trip()?;
        }
        e.topic_round_trip(10)?;
        Ok(e)
    }

    /// Puts the items of round `round` into both queues, for the next round to get.
    fn put_items(&mut self, round: u64) -> Result<(), Fail> {
        for i in 0..3 {
            self.queue
                .put(100 * round + i)
                .map_err(|e| Fail::new("put", e))?;
        }
        for i in 0..2 {
            self.serde_queue
                .put(Rec::new(round, i))
                .map_err(|e| Fail::new("put", e))?;
        }
        Ok(())
    }

    fn topic_round_trip(&mut self, n: u64) -> Result<u64, Fail> {
        let mut ok = 0;
        for _ in 0..n {
            let m = Msg::new(1, self.next_msg);
            self.next_msg += 1;
            self.publisher
                .send(m)
                .map_err(|e| Fail::new("send", e.reason()))?;
            let s = self
                .subscriber
                .recv_timeout(Duration::from_secs(2))
                .map_err(|e| Fail::new("recv", e))?;
            if *s != m || !s.is_intact() {
                return Err(Fail::new("bad-message", format!("{:?}", *s)));
            }
            ok += 1;
        }
        Ok(ok)
    }

    /// Sends one frame of `FRAME` bytes and receives it, checking every byte.
    fn frame_round_trip(&mut self) -> Result<(), Fail> {
        let index = self.next_frame;
        self.next_frame += 1;
        let mut loan = self
            .frames
            .loan::<u8>(&[FRAME])
            .map_err(|e| Fail::new(pool_outcome(&e).0, e))?;
        let (block, meta) = loan.parts_mut();
        fill_frame(index, block);
        *meta = FrameMeta {
            index,
            len: FRAME as u64,
        };
        loan.publish()
            .map_err(|e| Fail::new("publish", e.reason()))?;
        loop {
            match self.frames_sub.recv_timeout(Duration::from_secs(2)) {
                Ok(s) if s.meta().index == index => {
                    if let Some(at) = check_frame(index, s.bytes()) {
                        return Err(Fail::new("bad-frame", format!("frame {index} at {at}")));
                    }
                    return Ok(());
                }
                Ok(s) => {
                    return Err(Fail::new(
                        "bad-frame",
                        format!("frame {} while {index} was sent", s.meta().index),
                    ))
                }
                Err(RecvError::Lagged(_)) => {}
                Err(e) => return Err(Fail::new("recv", e)),
            }
        }
    }

    /// Uses every object again, getting the items round `round - 1` put and putting those of
    /// `round`; prints one `works` line per kind.
    fn use_all(&mut self, round: u64, when: &str, prefix: &str) -> Result<(), Fail> {
        let ok = self.topic_round_trip(100)?;
        // A subscriber joining the existing topic needs no new memory.
        let late = Topic::builder(&format!("{prefix}-topic"))
            .history(1)
            .subscriber::<Msg>()?;
        let last = late
            .recv_timeout(Duration::from_secs(2))
            .map_err(|e| Fail::new("recv", e))?;
        let late_ok = last.is_intact() && last.index + 1 == self.next_msg;
        println!("works kind=topic when={when} round_trips={ok} late_subscriber={late_ok}");

        let mut got = Vec::new();
        while let Ok(v) = self.queue.try_get() {
            got.push(v);
        }
        // A second participant joins the existing queue and gets what this one puts.
        self.queue.put(42).map_err(|e| Fail::new("put", e))?;
        let other = QueueBuilder::new(&format!("{prefix}-queue"))
            .existing()
            .open::<u64>()?;
        let again = other.try_get().map_err(|e| Fail::new("get", e))?;
        let got: Vec<String> = got.iter().map(u64::to_string).collect();
        println!(
            "works kind=queue when={when} got={} again={again}",
            got.join(",")
        );

        let mut recs = Vec::new();
        while let Ok(r) = self.serde_queue.try_get() {
            recs.push(r);
        }
        let expected: Vec<Rec> = (0..2).map(|i| Rec::new(round - 1, i)).collect();
        println!(
            "works kind=serde-queue when={when} got={} as_put={}",
            recs.len(),
            recs == expected
        );
        self.put_items(round)?;

        let before = self.value.load().map_err(|e| Fail::new("value", e))?;
        let old = self.value.fetch_add(5);
        let after = self.value.load().map_err(|e| Fail::new("value", e))?;
        println!("works kind=value when={when} before={before} old={old} after={after}");

        for _ in 0..10 {
            self.shared
                .update(Tally::bump)
                .map_err(|e| Fail::new("shared", e))?;
        }
        let (t, version) = self.shared.load().map_err(|e| Fail::new("shared", e))?;
        println!(
            "works kind=shared when={when} n={} complete={} version={version}",
            t.n,
            t.is_complete()
        );

        let len = self.array.len();
        let generation = self.array.get(0).map_or(0, |v| v ^ pattern(0, 0));
        let intact = (0..len).all(|i| self.array.get(i) == Some(pattern(generation, i)));
        for i in 0..len {
            self.array
                .set(i, pattern(generation + 1, i))
                .map_err(|e| Fail::new("array", e))?;
        }
        let rewritten = (0..len).all(|i| self.array.get(i) == Some(pattern(generation + 1, i)));
        let attached = SharedArray::<u32>::attach(&format!("{prefix}-array"))
            .map_err(|e| Fail::new(array_outcome(&e).0, e))?;
        let seen = attached.get(len - 1) == Some(pattern(generation + 1, len - 1));
        println!(
            "works kind=array when={when} generation={generation} intact={intact} \
             rewritten={rewritten} attached={seen}"
        );

        let segments = self.frames.pool_stats().segments;
        for _ in 0..20 {
            self.frame_round_trip()?;
        }
        println!(
            "works kind=array-topic when={when} frames=20 segments_before={segments} \
             segments_after={}",
            self.frames.pool_stats().segments
        );
        Ok(())
    }
}

/// Creates scoped byte arrays of `len` bytes under `prefix` until one is refused; returns them
/// and the refusal's code.
fn fill(
    prefix: &str,
    len: usize,
    made: &mut Vec<SharedArray<u8>>,
) -> Result<(u32, &'static str, u64), Fail> {
    let mut n = 0;
    loop {
        let name = format!("{prefix}-fill-{}", made.len());
        match SharedArray::<u8>::options().scoped().create(&name, &[len]) {
            Ok(a) => {
                // Touch every page: the space is really there.
                a.fill(0xa5);
                made.push(a);
                n += 1;
            }
            Err(e) => {
                let (code, requested) = array_outcome(&e);
                if file_exists(&name) {
                    return Err(Fail::new("left-behind", format!("{name} after {e}")));
                }
                return Ok((n, code, requested));
            }
        }
        if n > 100_000 {
            return Err(Fail::new("never-full", "100000 arrays and no refusal"));
        }
    }
}

/// One creation attempted in a full `/dev/shm`: prints `refused kind=.. code=.. requested=..
/// left=..` (`code=created` if it was not refused).
fn attempt(kind: &str, name: &str, r: Result<(), (&'static str, u64, String)>) {
    let left = file_exists(name);
    match r {
        Ok(()) => println!("refused kind={kind} code=created requested=0 left={left}"),
        Err((code, requested, msg)) => {
            println!("refused kind={kind} code={code} requested={requested} left={left} msg={msg}")
        }
    }
}

fn open_r<T>(r: Result<T, OpenError>) -> Result<(), (&'static str, u64, String)> {
    r.map(drop).map_err(|e| {
        let (c, n) = open_outcome(&e);
        (c, n, e.to_string())
    })
}

pub(crate) fn small_shm(a: &SmallShmArgs) -> Result<(), Fail> {
    let prefix = &a.prefix;
    let total = rustix::fs::statvfs(SHM_DIR)
        .map(|st| st.f_blocks * st.f_frsize)
        .map_err(|e| Fail::new("statvfs", e))?;
    println!("start total={total} free={}", free_bytes());

    let mut existing = Existing::make(prefix)?;
    println!("made free={}", free_bytes());
    existing.use_all(1, "roomy", prefix)?;

    // Fill what is left: large arrays first, then smaller ones, down to one page of payload.
    let mut filler = Vec::new();
    let mut arrays = 0;
    for len in [8 << 20, 1 << 20, 64 << 10, 1] {
        let (n, code, requested) = fill(prefix, len, &mut filler)?;
        arrays += n;
        println!("fill len={len} made={n} code={code} requested={requested}");
    }
    // Then values, the smallest objects (a header page and one page of payload).
    let mut values = Vec::new();
    let refusal = loop {
        match Value::open_or_create(&format!("{prefix}-fill-v{}", values.len()), 0u64) {
            Ok(v) => values.push(v),
            Err(e) => break open_outcome(&e),
        }
        if values.len() > 100_000 {
            return Err(Fail::new("never-full", "100000 values and no refusal"));
        }
    };
    println!(
        "fill len=value made={} code={} requested={}",
        values.len(),
        refusal.0,
        refusal.1
    );
    println!("full arrays={arrays} free={}", free_bytes());

    // Every kind of creation is refused, with OutOfSpace, and leaves nothing behind.
    let n = |what: &str| format!("{prefix}-new-{what}");
    attempt(
        "topic",
        &n("topic"),
        open_r(Topic::builder(&n("topic")).publisher::<Msg>()),
    );
    attempt(
        "serde-topic",
        &n("stopic"),
        open_r(Topic::builder(&n("stopic")).serde_subscriber::<Rec>()),
    );
    attempt(
        "queue",
        &n("queue"),
        open_r(QueueBuilder::new(&n("queue")).open::<u64>()),
    );
    attempt(
        "serde-queue",
        &n("squeue"),
        open_r(QueueBuilder::new(&n("squeue")).open_serde::<Rec>()),
    );
    attempt(
        "value",
        &n("value"),
        open_r(Value::open_or_create(&n("value"), 1u64)),
    );
    attempt(
        "shared",
        &n("shared"),
        open_r(Shared::open_or_create(
            &n("shared"),
            4096,
            &Tally::default(),
        )),
    );
    attempt(
        "mutex",
        &n("mutex"),
        open_r(Mutex::open_or_create(&n("mutex"), 0u64)),
    );
    attempt(
        "semaphore",
        &n("sem"),
        open_r(Semaphore::open_or_create(&n("sem"), 1)),
    );
    attempt(
        "event",
        &n("event"),
        open_r(Event::open_or_create(
            &n("event"),
            EventMode::AutoReset,
            false,
        )),
    );
    attempt(
        "barrier",
        &n("barrier"),
        open_r(Barrier::open(&n("barrier"), 2)),
    );
    let r = SharedArray::<u8>::options()
        .scoped()
        .create(&n("array"), &[1])
        .map(drop)
        .map_err(|e| {
            let (c, r) = array_outcome(&e);
            (c, r, e.to_string())
        });
    attempt("array", &n("array"), r);
    attempt(
        "array-topic",
        &n("frames"),
        open_r(Topic::builder(&n("frames")).array_publisher::<FrameMeta>()),
    );
    // The existing array topic's pool must grow for a frame larger than its blocks.
    let big = 4 * FRAME;
    let r = existing
        .frames
        .send::<u8>(
            &[big],
            &vec![7u8; big],
            FrameMeta {
                index: u64::MAX,
                len: big as u64,
            },
        )
        .map(drop)
        .map_err(|e| match e.reason() {
            ArraySendFailure::Pool(p) => {
                let (c, r) = pool_outcome(p);
                (c, r, p.to_string())
            }
            other => ("send-other", 0, other.to_string()),
        });
    // Pool segments are named after the topic: none may be left beyond the first one.
    let pool_segments = std::fs::read_dir(SHM_DIR)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .contains(&format!("{prefix}-frames.pool."))
                })
                .count()
        })
        .unwrap_or(0);
    match r {
        Ok(()) => println!("refused kind=pool-growth code=created requested=0 left=false"),
        Err((code, requested, msg)) => println!(
            "refused kind=pool-growth code={code} requested={requested} \
             pool_segments={pool_segments} left=false msg={msg}"
        ),
    }
    println!("refusals-done free={}", free_bytes());

    // Everything made before keeps working.
    existing.use_all(2, "full", prefix)?;

    // Room again: creation works again.
    drop(filler);
    drop(values);
    let again = Topic::builder(&n("topic")).publisher::<Msg>()?;
    let big_ok = existing
        .frames
        .send::<u8>(
            &[big],
            &vec![7u8; big],
            FrameMeta {
                index: u64::MAX,
                len: big as u64,
            },
        )
        .is_ok();
    println!(
        "room-again free={} topic_created={} pool_grew={big_ok}",
        free_bytes(),
        again.created_topic()
    );
    drop(again);
    drop(existing);
    let left: Vec<String> = std::fs::read_dir(SHM_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    println!(
        "done left={} free={}",
        if left.is_empty() {
            "none".to_owned()
        } else {
            left.join(",")
        },
        free_bytes()
    );
    Ok(())
}

/// Creates one-page values until the file system has no inode left; prints `inodes made=N
/// code=.. requested=..`, then what still works.
pub(crate) fn few_inodes(a: &FewInodesArgs) -> Result<(), Fail> {
    let mut made = Vec::new();
    let outcome = loop {
        if made.len() as u32 >= a.max {
            return Err(Fail::new("never-full", format!("{} values", a.max)));
        }
        let name = format!("{}-v{}", a.prefix, made.len());
        match Value::open_or_create(&name, made.len() as u64) {
            Ok(v) => made.push(v),
            Err(e) => {
                let (code, requested) = open_outcome(&e);
                break (code, requested, file_exists(&name), e.to_string());
            }
        }
    };
    let (code, requested, left, msg) = outcome;
    println!(
        "inodes made={} code={code} requested={requested} left={left} free={} msg={msg}",
        made.len(),
        free_bytes()
    );
    let intact = made
        .iter()
        .enumerate()
        .all(|(i, v)| v.load().is_ok_and(|x| x == i as u64));
    println!("works kind=values intact={intact}");
    Ok(())
}

//! Hand-off of large blocks between two processes (64 KiB, 4 MiB, 64 MiB), shmbus beside a
//! bare shared mapping in the same run:
//!
//! | group | `shmbus` | `floor` |
//! |---|---|---|
//! | `handoff_<size>` | an array topic: loan a block, write every byte, publish; the peer receives it, reads every byte, drops it and acks on a second, small topic | two blocks and a few atomics in one shared segment: write every byte of a block, publish its number with a `Release` store; the peer spins on it, reads every byte, acks with an atomic |
//! | `handoff_empty` | the same round writing and reading only the first 8 bytes, at 64 KiB and 64 MiB | the same round (8 bytes, 64 KiB blocks) |
//!
//! One iteration is one complete round: write + publish + the peer's read + its ack. Both
//! sides busy-poll (`try_recv` or an atomic load), yielding the core after 10 µs of polling.
//! The bench process is the producer; it re-executes itself as the consumer
//! (`SHMBUS_ARRAYS_PEER`). The payload work is identical in both variants (a `fill` and a
//! counting pass over every byte), so the difference is the cost of the hand-off itself.
//! `handoff_empty` shows that this cost does not grow with the block size.
//!
//! The array topic has capacity 1, so its pool rotates between two blocks like the floor
//! (see `data_topic`).

use std::hint::black_box;
use std::os::unix::process::parent_id;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use shmbus::{ArrayPublisher, Overflow, RecvError, Subscriber, Topic};
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::segment::{CreateOptions, Expect, Kind, Segment};

const PEER: &str = "SHMBUS_ARRAYS_PEER";
/// The sequence number that tells the peer to leave.
const STOP: u64 = u64::MAX;
/// How long either side waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(10);
/// A peer that hears nothing for this long leaves (its parent may be stuck).
const PEER_IDLE: Duration = Duration::from_secs(60);

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const SIZES: [(usize, &str); 3] = [(64 * KIB, "64KiB"), (4 * MIB, "4MiB"), (64 * MIB, "64MiB")];

/// Metadata sent with every array.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Meta {
    seq: u64,
}

/// The peer's acknowledgement: the array it read and how many of its bytes were wrong.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Ack {
    seq: u64,
    bad: u64,
}

/// How much of the block each side touches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pass {
    /// Write every byte, read every byte.
    Full,
    /// Write and read the first 8 bytes only.
    Head,
}

impl Pass {
    fn as_str(self) -> &'static str {
        match self {
            Pass::Full => "full",
            Pass::Head => "head",
        }
    }

    fn parse(s: &str) -> Pass {
        match s {
            "full" => Pass::Full,
            "head" => Pass::Head,
            other => panic!("unknown pass {other}"),
        }
    }

    /// The producer's write of array `seq`.
    fn write(self, block: &mut [u8], seq: u64) {
        match self {
            Pass::Full => block.fill(seq as u8),
            Pass::Head => block[..8].copy_from_slice(&seq.to_le_bytes()),
        }
    }

    /// The consumer's read of array `seq`: how many bytes differ from what `write` put there.
    fn read(self, block: &[u8], seq: u64) -> u64 {
        let block = black_box(block);
        let bad = match self {
            Pass::Full => {
                let want = seq as u8;
                block.iter().filter(|&&b| b != want).count() as u64
            }
            Pass::Head => u64::from(block[..8] != seq.to_le_bytes()),
        };
        black_box(bad)
    }
}

/// A name private to this run, the same in the bench and in its peer.
fn unique(tag: &str) -> String {
    format!("bench.{}.arrays.{tag}", std::process::id())
}

/// Capacity 1: a published array stays in the ring, holding its block, until the next one
/// evicts it, even once read and released; so the pool rotates between capacity + 1 = 2 blocks,
/// like the floor. Its first segment holds just those two (a third would show in the pool
/// line printed after each run).
fn data_topic(base: &str) -> Topic {
    Topic::builder(&format!("{base}.data"))
        .capacity(1)
        .pool_blocks_per_segment(2)
        .overflow(Overflow::Overwrite)
        .pool_linger(Duration::from_millis(100))
}

fn ack_topic(base: &str) -> Topic {
    Topic::builder(&format!("{base}.ack"))
        .capacity(4)
        .overflow(Overflow::Overwrite)
}

/// The peer process: spawned with the role and its arguments, killed and reaped on drop.
struct Peer(Child);

impl Peer {
    fn spawn(spec: &str) -> Peer {
        Peer(
            Command::new(std::env::current_exe().expect("own path"))
                .env(PEER, spec)
                .spawn()
                .expect("spawn the peer"),
        )
    }

    /// Panics if the peer has exited (it failed: it leaves only when told to).
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("the peer exited early: {status}");
        }
    }

    /// Waits (boundedly) for the peer to leave after being told to; the drop kills it otherwise.
    fn join(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.0.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long a waiter spins before it starts yielding its core at each poll.
const SPIN_FOR: Duration = Duration::from_micros(10);

/// A waiter's polling: spin for the first [`SPIN_FOR`] of a wait, then yield at each poll, so
/// that a waiter that shares its core with the other side (or with anything else on this
/// 2-core machine) lets it run instead of burning the rest of its time slice. The switch is
/// by time, not by count, so that both variants (a `try_recv` or an atomic load per poll)
/// spin alike. Both sides of both variants wait this way.
struct Backoff {
    since: Instant,
    polls: u32,
    yielding: bool,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            since: Instant::now(),
            polls: 0,
            yielding: false,
        }
    }

    /// One empty poll.
    fn pause(&mut self) {
        if self.yielding {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
            if self.polls % 16 == 15 && self.since.elapsed() > SPIN_FOR {
                self.yielding = true;
            }
        }
        self.polls = self.polls.wrapping_add(1);
    }
}

/// Polls until `done` holds; panics if the peer dies or answers nothing for [`PATIENCE`].
fn spin_until(peer: &mut Peer, mut done: impl FnMut() -> bool) {
    let mut wait = Backoff::new();
    while !done() {
        wait.pause();
        if wait.polls % 4096 == 0 {
            if wait.since.elapsed() > PATIENCE {
                panic!("the peer stopped answering");
            }
            if wait.polls % (1 << 16) == 0 {
                peer.check_alive();
            }
        }
    }
}

/// The peer's side of bounded waiting: it leaves when its parent is gone or silent too long.
struct Watchdog {
    parent: u32,
    wait: Backoff,
    checked: Instant,
}

impl Watchdog {
    fn new(parent: u32) -> Watchdog {
        Watchdog {
            parent,
            wait: Backoff::new(),
            checked: Instant::now(),
        }
    }

    /// One empty poll; `false` when the peer should give up.
    fn spin(&mut self) -> bool {
        self.wait.pause();
        if self.wait.polls % 1024 == 0 {
            let now = Instant::now();
            if now - self.checked > Duration::from_millis(50) {
                self.checked = now;
                if parent_id() != self.parent || now - self.wait.since > PEER_IDLE {
                    return false;
                }
            }
        }
        true
    }

    /// Something arrived: the next wait starts.
    fn busy(&mut self) {
        self.wait = Backoff::new();
    }
}

// ---- the shmbus variant ----

/// The consumer of an array topic: receive, read, drop, ack.
fn shmbus_peer(base: &str, pass: Pass, parent: u32) {
    let rx = data_topic(base).array_subscriber::<Meta>().unwrap();
    let mut ack = ack_topic(base).publisher::<Ack>().unwrap();
    // Hello: the subscriber has joined, the bench may publish.
    ack.send(Ack { seq: 0, bad: 0 }).unwrap();
    let mut watch = Watchdog::new(parent);
    loop {
        let sample = match rx.try_recv() {
            Ok(s) => s,
            Err(RecvError::Empty) => {
                if !watch.spin() {
                    return;
                }
                continue;
            }
            Err(RecvError::Disconnected) => return,
            Err(e) => panic!("array peer: {e}"),
        };
        watch.busy();
        let seq = sample.meta().seq;
        if seq == STOP {
            return;
        }
        let bad = pass.read(sample.as_slice::<u8>().unwrap(), seq);
        drop(sample);
        ack.send(Ack { seq, bad }).unwrap();
    }
}

/// Waits for the ack of `seq` and checks that the peer read what was written.
fn wait_ack(acks: &Subscriber<Ack>, peer: &mut Peer, seq: u64) {
    spin_until(peer, || match acks.try_recv() {
        Ok(a) => {
            assert_eq!(a.seq, seq, "acked the wrong array");
            assert_eq!(
                a.bad, 0,
                "the peer read {} wrong bytes of array {seq}",
                a.bad
            );
            true
        }
        Err(RecvError::Empty) => false,
        Err(e) => panic!("ack topic: {e}"),
    });
}

/// One producer round: loan, write, publish.
fn publish(tx: &mut ArrayPublisher<Meta>, size: usize, pass: Pass, seq: u64) {
    let mut loan = tx.loan::<u8>(&[size]).expect("a block");
    let (block, meta) = loan.parts_mut();
    pass.write(block, seq);
    *meta = Meta { seq };
    loan.publish().map_err(|e| e.to_string()).unwrap();
}

fn bench_shmbus(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    tag: &str,
    size: usize,
    pass: Pass,
) {
    let base = unique(tag);
    // Declared before the peer, so dropped after it: this process is the last user out and
    // removes every segment, also when a panic unwinds.
    let mut tx = data_topic(&base).array_publisher::<Meta>().unwrap();
    let acks = ack_topic(&base).subscriber::<Ack>().unwrap();
    let mut peer = Peer::spawn(&format!(
        "shmbus:{base}:{}:{}",
        pass.as_str(),
        std::process::id()
    ));
    wait_ack(&acks, &mut peer, 0);
    let mut seq = 0;
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                seq += 1;
                publish(&mut tx, size, pass, seq);
                wait_ack(&acks, &mut peer, seq);
            }
            start.elapsed()
        })
    });
    let s = tx.pool_stats();
    if s.segments > 0 {
        // (Nothing ran when a filter left this bench out.)
        println!(
            "  (shmbus pool: {} segment(s), {} blocks, {} MiB; {} retired, {} waits)",
            s.segments,
            s.blocks,
            s.bytes >> 20,
            s.retired,
            s.waits
        );
    }
    publish(&mut tx, size, Pass::Head, STOP);
    peer.join();
}

// ---- the floor: a bare shared mapping ----

/// Payload layout: a page of control words, then two page-aligned blocks.
const CONTROL: usize = 4096;
/// Word indices (8-byte words, each on its own cache line).
const READY: usize = 0;
const PUBLISHED: usize = 8;
const ACKED: usize = 16;
const BAD: usize = 24;

/// Two blocks of `size` bytes and a few atomics in one scoped segment.
struct Floor {
    seg: Segment,
    size: usize,
}

impl Floor {
    fn type_info() -> TypeInfo {
        TypeInfo::new("bench-floor-blocks", 1, 8, Codec::Bytes).expect("short name")
    }

    fn create(name: &str, size: usize) -> Floor {
        let name = Name::new(name).expect("valid name");
        let opts = CreateOptions::new(Kind::Value, Self::type_info(), CONTROL + 2 * size);
        let seg = Segment::create(&name, &opts, |_| {}).expect("floor segment");
        Floor { seg, size }
    }

    fn open(name: &str, size: usize) -> Floor {
        let name = Name::new(name).expect("valid name");
        let seg = Segment::open(&name, &Expect::new(Kind::Value, Self::type_info()))
            .expect("floor segment");
        assert_eq!(seg.payload_len(), CONTROL + 2 * size, "floor segment size");
        Floor { seg, size }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!((i + 1) * 8 <= CONTROL);
        // SAFETY: inside the control page (checked), 8-aligned (the payload is page-aligned),
        // the mapping lives as long as `self`, and every access to these words is atomic.
        unsafe { &*self.seg.payload_ptr().as_ptr().cast::<AtomicU64>().add(i) }
    }

    fn block_ptr(&self, b: usize) -> *mut u8 {
        assert!(b < 2);
        // SAFETY: CONTROL + (b + 1) * size <= payload length (checked at open, made so at
        // create), so the offset stays inside the mapping.
        unsafe { self.seg.payload_ptr().as_ptr().add(CONTROL + b * self.size) }
    }

    /// Block `b`, to write. The protocol gives it to the producer alone between the ack of the
    /// array last published in it and the next publish.
    fn block_mut(&mut self, b: usize) -> &mut [u8] {
        // SAFETY: inside the mapping (see `block_ptr`), which lives as long as `self`; `u8` has
        // no invalid values. By the protocol the consumer reads block `b` only between the
        // Release store of its number in PUBLISHED and its own ack, and the producer writes it
        // only after that ack (Acquire) and before the next such store, so no one else touches
        // these bytes while this borrow lives (it ends before the producer publishes).
        unsafe { std::slice::from_raw_parts_mut(self.block_ptr(b), self.size) }
    }

    /// Block `b`, to read. The protocol gives it to the consumer alone between the publish
    /// (Acquire-loaded) and its ack.
    fn block(&self, b: usize) -> &[u8] {
        // SAFETY: inside the mapping (see `block_ptr`), which lives as long as `self`; `u8` has
        // no invalid values. By the protocol (see `block_mut`) the producer does not write
        // block `b` from its publish until the consumer's ack, and this borrow ends before
        // the ack.
        unsafe { std::slice::from_raw_parts(self.block_ptr(b), self.size) }
    }
}

/// The floor's consumer: spin on PUBLISHED, read the block, ack.
fn floor_peer(name: &str, size: usize, pass: Pass, parent: u32) {
    let f = Floor::open(name, size);
    f.word(READY).store(1, Ordering::Release);
    let mut watch = Watchdog::new(parent);
    let mut last = 0;
    loop {
        let seq = f.word(PUBLISHED).load(Ordering::Acquire);
        if seq == last {
            if !watch.spin() {
                return;
            }
            continue;
        }
        watch.busy();
        if seq == STOP {
            return;
        }
        last = seq;
        let bad = pass.read(f.block((seq % 2) as usize), seq);
        f.word(BAD).store(bad, Ordering::Relaxed);
        f.word(ACKED).store(seq, Ordering::Release);
    }
}

fn bench_floor(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    tag: &str,
    size: usize,
    pass: Pass,
) {
    let name = unique(tag);
    // Declared before the peer, so dropped after it (see `bench_shmbus`).
    let mut f = Floor::create(&name, size);
    let mut peer = Peer::spawn(&format!(
        "floor:{name}:{}:{}:{size}",
        pass.as_str(),
        std::process::id()
    ));
    spin_until(&mut peer, || f.word(READY).load(Ordering::Acquire) == 1);
    let mut seq = 0;
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                seq += 1;
                pass.write(f.block_mut((seq % 2) as usize), seq);
                f.word(PUBLISHED).store(seq, Ordering::Release);
                spin_until(&mut peer, || f.word(ACKED).load(Ordering::Acquire) == seq);
                let bad = f.word(BAD).load(Ordering::Relaxed);
                assert_eq!(bad, 0, "the peer read {bad} wrong bytes of block {seq}");
            }
            start.elapsed()
        })
    });
    f.word(PUBLISHED).store(STOP, Ordering::Release);
    peer.join();
}

// ---- groups ----

fn handoff(c: &mut Criterion) {
    for (size, label) in SIZES {
        let mut g = c.benchmark_group(format!("handoff_{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 64 * MIB {
            // Tens of milliseconds per round: a few equal samples rather than a linear ramp.
            g.sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .measurement_time(Duration::from_secs(4));
        } else {
            g.sample_size(20);
        }
        let shmbus_id = BenchmarkId::from_parameter("shmbus");
        let floor_id = BenchmarkId::from_parameter("floor");
        bench_shmbus(&mut g, shmbus_id, &format!("a{label}"), size, Pass::Full);
        bench_floor(&mut g, floor_id, &format!("f{label}"), size, Pass::Full);
        g.finish();
    }
}

fn handoff_empty(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff_empty");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for (size, label) in [SIZES[0], SIZES[2]] {
        let id = BenchmarkId::new("shmbus", label);
        bench_shmbus(&mut g, id, &format!("e{label}"), size, Pass::Head);
    }
    // The bare round trip of the atomics (the block size does not matter here).
    let id = BenchmarkId::new("floor", SIZES[0].1);
    bench_floor(&mut g, id, "e-floor", SIZES[0].0, Pass::Head);
    g.finish();
}

fn peer(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts[..] {
        ["shmbus", base, pass, parent] => {
            shmbus_peer(base, Pass::parse(pass), parent.parse().expect("parent pid"));
        }
        ["floor", name, pass, parent, size] => floor_peer(
            name,
            size.parse().expect("size"),
            Pass::parse(pass),
            parent.parse().expect("parent pid"),
        ),
        _ => panic!("unknown peer spec {spec}"),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = handoff, handoff_empty
}

fn main() {
    if let Ok(spec) = std::env::var(PEER) {
        peer(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

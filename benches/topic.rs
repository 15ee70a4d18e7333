//! One-way latency (busy-poll and blocking) and 64-byte throughput of a topic between two
//! processes, each beside its baseline in the same run:
//!
//! | bench | shmbus | baseline |
//! |---|---|---|
//! | `latency_busy` | ping-pong over two topics, receivers poll `try_recv` | two atomics in one shared mapping |
//! | `latency_blocking` | ping-pong, receivers sleep in `recv` | a bare futex ping-pong |
//! | `throughput_64B` | one publisher streams to one subscriber (back-pressure) | a bare SPSC ring in shared memory |
//!
//! Latency is the round trip halved. Divide the shmbus figure by the baseline's for the ratio.
//! The bench re-executes itself as the peer process (`SHMBUS_BENCH_PEER`).

use std::hint::black_box;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use shmbus::{Overflow, Topic};
use shmbus_core::futex;
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::name::Name;
use shmbus_core::segment::{CreateOptions, Expect, Kind, Segment};

const PEER: &str = "SHMBUS_BENCH_PEER";
const STOP: u64 = u64::MAX;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Msg8 {
    seq: u64,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    body: [u64; 7],
}

/// A name private to this run, the same in the bench and in its peer.
fn unique(tag: &str) -> String {
    format!("bench.{}.{tag}", std::process::id())
}

fn names(base: &str) -> (String, String) {
    (format!("{base}.ping"), format!("{base}.pong"))
}

/// Spins until `done` holds; panics after 10 s (a dead peer must not hang the bench).
fn spin_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut n = 0u32;
    while !done() {
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n % 4096 == 0 && start.elapsed() > Duration::from_secs(10) {
            panic!("the peer stopped answering");
        }
    }
}

/// Kills and reaps the peer on drop.
struct Peer(Child);
impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(role: &str, arg: &str) -> Peer {
    Peer(
        Command::new(std::env::current_exe().expect("own path"))
            .env(PEER, format!("{role}:{arg}"))
            .spawn()
            .expect("spawn the peer"),
    )
}

fn topic(name: &str, capacity: u32, overflow: Overflow) -> Topic {
    Topic::builder(name)
        .capacity(capacity)
        .overflow(overflow)
        .publish_timeout(Some(Duration::from_secs(10)))
}

/// Shared words for the baselines: a 4 KiB segment of atomics.
struct Words {
    seg: Segment,
}

impl Words {
    fn open_or_create(name: &str) -> Words {
        let name = Name::new(name).expect("valid name");
        let ty = TypeInfo::new("bench-words", 8, 8, Codec::Bytes).expect("short name");
        let expect = Expect::new(Kind::Value, ty.clone());
        let (seg, _) = Segment::open_or_create(
            &name,
            &expect,
            &CreateOptions::new(Kind::Value, ty, 1 << 20),
            |_| {},
        )
        .expect("baseline segment");
        Words { seg }
    }

    /// Atomic word `i` (8-byte slots, `i < 1 << 17`).
    fn u64(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.seg.payload_len() / 8);
        // SAFETY: in bounds (checked), 8-aligned (page-aligned payload), the mapping lives as long
        // as `self`, and every access to these words is atomic.
        unsafe { &*self.seg.payload_ptr().as_ptr().cast::<AtomicU64>().add(i) }
    }

    fn u32(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.seg.payload_len() / 4);
        // SAFETY: as for `u64`.
        unsafe { &*self.seg.payload_ptr().as_ptr().cast::<AtomicU32>().add(i) }
    }
}

// Word indices, each on its own cache line.
const A: usize = 0;
const B: usize = 16;
const HEAD: usize = 32;
const TAIL: usize = 48;
const RING: usize = 64; // 64-byte records follow
const RING_LEN: usize = 1024;

fn peer(role: &str, arg: &str) {
    match role {
        "echo-busy" | "echo-block" => {
            let (ping, pong) = names(arg);
            let rx = topic(&ping, 16, Overflow::Overwrite)
                .subscriber::<Msg8>()
                .unwrap();
            let mut tx = topic(&pong, 16, Overflow::Overwrite)
                .publisher::<Msg8>()
                .unwrap();
            println!("ready");
            loop {
                let seq = if role == "echo-busy" {
                    loop {
                        if let Ok(m) = rx.try_recv() {
                            break m.seq;
                        }
                        std::hint::spin_loop();
                    }
                } else {
                    match rx.recv() {
                        Ok(m) => m.seq,
                        Err(_) => return,
                    }
                };
                if seq == STOP {
                    return;
                }
                tx.send(Msg8 { seq }).unwrap();
            }
        }
        "drain" => {
            let (ping, pong) = names(arg);
            let rx = topic(&ping, 1024, Overflow::BackPressure)
                .subscriber::<Msg64>()
                .unwrap();
            let mut tx = topic(&pong, 16, Overflow::Overwrite)
                .publisher::<Msg8>()
                .unwrap();
            println!("ready");
            loop {
                match rx.recv() {
                    Ok(m) if m.seq == STOP => return,
                    // The last message of a batch: tell the bench it has been read.
                    Ok(m) if m.body[0] == 1 => {
                        tx.send(Msg8 { seq: m.seq }).unwrap();
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
        "floor-busy" => {
            let w = Words::open_or_create(arg);
            loop {
                let v = w.u64(A).load(Ordering::Acquire);
                if v == STOP {
                    return;
                }
                if v != w.u64(B).load(Ordering::Relaxed) {
                    w.u64(B).store(v, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        }
        "floor-futex" => {
            let w = Words::open_or_create(arg);
            let mut seen = 0;
            loop {
                let v = w.u32(A).load(Ordering::Acquire);
                if v == u32::MAX {
                    return;
                }
                if v == seen {
                    futex::wait(w.u32(A), v, Some(Duration::from_secs(5)));
                    continue;
                }
                seen = v;
                w.u32(B).store(v, Ordering::Release);
                futex::wake(w.u32(B), 1);
            }
        }
        "floor-spsc" => {
            let w = Words::open_or_create(arg);
            let mut head = 0u64;
            loop {
                while w.u64(TAIL).load(Ordering::Acquire) == head {
                    std::hint::spin_loop();
                }
                let rec = RING + (head as usize % RING_LEN) * 8;
                let seq = w.u64(rec).load(Ordering::Relaxed);
                let mut sum = 0;
                for k in 1..8 {
                    sum += w.u64(rec + k).load(Ordering::Relaxed);
                }
                black_box(sum);
                head += 1;
                w.u64(HEAD).store(head, Ordering::Release);
                if seq == STOP {
                    return;
                }
            }
        }
        other => panic!("unknown peer role {other}"),
    }
}

fn wait_ready(p: &mut Peer) {
    // The peer prints "ready" on stdout only for topic roles; give it a moment in any case.
    let _ = p;
    std::thread::sleep(Duration::from_millis(200));
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("latency_busy");
    {
        let tag = &unique("lb");
        let (ping, pong) = names(tag);
        let mut tx = topic(&ping, 16, Overflow::Overwrite)
            .publisher::<Msg8>()
            .unwrap();
        let rx = topic(&pong, 16, Overflow::Overwrite)
            .subscriber::<Msg8>()
            .unwrap();
        let mut p = spawn("echo-busy", tag);
        wait_ready(&mut p);
        let mut seq = 0;
        g.bench_function("shmbus", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    seq += 1;
                    tx.send(Msg8 { seq }).unwrap();
                    spin_until(|| match rx.try_recv() {
                        Ok(m) => {
                            assert_eq!(m.seq, seq);
                            true
                        }
                        Err(_) => false,
                    });
                }
                start.elapsed() / 2
            })
        });
        tx.send(Msg8 { seq: STOP }).unwrap();
    }
    {
        let name = unique("floor-busy");
        let w = Words::open_or_create(&name);
        let _p = spawn("floor-busy", &name);
        let mut seq = 0;
        g.bench_function("floor_cacheline", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    seq += 1;
                    w.u64(A).store(seq, Ordering::Release);
                    spin_until(|| w.u64(B).load(Ordering::Acquire) == seq);
                }
                start.elapsed() / 2
            })
        });
        w.u64(A).store(STOP, Ordering::Release);
    }
    g.finish();

    let mut g = c.benchmark_group("latency_blocking");
    {
        let tag = &unique("lk");
        let (ping, pong) = names(tag);
        let mut tx = topic(&ping, 16, Overflow::Overwrite)
            .publisher::<Msg8>()
            .unwrap();
        let rx = topic(&pong, 16, Overflow::Overwrite)
            .subscriber::<Msg8>()
            .unwrap();
        let mut p = spawn("echo-block", tag);
        wait_ready(&mut p);
        let mut seq = 0;
        g.bench_function("shmbus", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    seq += 1;
                    tx.send(Msg8 { seq }).unwrap();
                    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().seq, seq);
                }
                start.elapsed() / 2
            })
        });
        tx.send(Msg8 { seq: STOP }).unwrap();
    }
    {
        let name = unique("floor-futex");
        let w = Words::open_or_create(&name);
        let _p = spawn("floor-futex", &name);
        let mut seq = 0u32;
        g.bench_function("floor_futex", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    seq = seq.wrapping_add(1).max(1) % (u32::MAX - 1);
                    w.u32(A).store(seq, Ordering::Release);
                    futex::wake(w.u32(A), 1);
                    loop {
                        let v = w.u32(B).load(Ordering::Acquire);
                        if v == seq {
                            break;
                        }
                        futex::wait(w.u32(B), v, Some(Duration::from_secs(5)));
                    }
                }
                start.elapsed() / 2
            })
        });
        w.u32(A).store(u32::MAX, Ordering::Release);
        futex::wake(w.u32(A), 1);
    }
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput_64B");
    g.throughput(Throughput::Elements(1));
    {
        let tag = &unique("tp");
        let (ping, pong) = names(tag);
        let mut tx = topic(&ping, 1024, Overflow::BackPressure)
            .publisher::<Msg64>()
            .unwrap();
        let rx = topic(&pong, 16, Overflow::Overwrite)
            .subscriber::<Msg8>()
            .unwrap();
        let mut p = spawn("drain", tag);
        wait_ready(&mut p);
        let mut seq = 0;
        g.bench_function("shmbus", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    seq += 1;
                    let mut loan = tx.loan().unwrap();
                    loan.seq = seq;
                    loan.body = [u64::from(i + 1 == iters), 2, 3, 4, 5, 6, 7];
                    loan.publish().map_err(|e| e.to_string()).unwrap();
                }
                // The batch is done when the peer has read its last message.
                assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().seq, seq);
                start.elapsed()
            })
        });
        tx.send(Msg64 {
            seq: STOP,
            body: [0; 7],
        })
        .unwrap();
    }
    {
        let name = unique("floor-spsc");
        let w = Words::open_or_create(&name);
        let _p = spawn("floor-spsc", &name);
        let mut tail = 0u64;
        g.bench_function("floor_spsc_ring", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    spin_until(|| tail - w.u64(HEAD).load(Ordering::Acquire) < RING_LEN as u64);
                    let rec = RING + (tail as usize % RING_LEN) * 8;
                    w.u64(rec).store(tail, Ordering::Relaxed);
                    for k in 1..8 {
                        w.u64(rec + k).store(k as u64, Ordering::Relaxed);
                    }
                    tail += 1;
                    w.u64(TAIL).store(tail, Ordering::Release);
                }
                spin_until(|| w.u64(HEAD).load(Ordering::Acquire) == tail);
                start.elapsed()
            })
        });
        // Send a STOP record.
        let rec = RING + (tail as usize % RING_LEN) * 8;
        w.u64(rec).store(STOP, Ordering::Relaxed);
        w.u64(TAIL).store(tail + 1, Ordering::Release);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = latency, throughput
}

fn main() {
    if let Ok(spec) = std::env::var(PEER) {
        let (role, arg) = spec.split_once(':').expect("role:arg");
        peer(role, arg);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

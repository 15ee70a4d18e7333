//! The floors of the scaling scenarios: a broadcast ring polled by N subscribers, a ping-pong
//! and an SPSC ring of messages of any size, and Vyukov's bounded ring for several producers
//! into one consumer.

use std::hint::spin_loop;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Instant;

use super::{check_tagged, msg_slots, share, tagged, STREAM_SLOTS};
use crate::ctl::{self, line, now_ns, spin_until};
use crate::floor::{collect_acks, consume, fill, yield_now};
use crate::{Measured, Res, Run};

/// Bytes of the data area the floor of each scaling scenario needs.
pub(crate) fn fanout_stream_bytes() -> usize {
    STREAM_SLOTS * 64
}

/// See [`fanout_stream_bytes`].
pub(crate) fn pingpong_bytes(bytes: usize) -> usize {
    2 * PINGPONG_BUFFERS[PINGPONG_BUFFERS.len() - 1] * region(bytes)
}

/// See [`fanout_stream_bytes`].
pub(crate) fn stream_bytes(bytes: usize) -> usize {
    msg_slots(bytes) * bytes
}

/// See [`fanout_stream_bytes`].
pub(crate) fn publishers_bytes() -> usize {
    STREAM_SLOTS * CELL_BYTES
}

/// A subscriber's progress: it has read `count` messages (the publisher's view of its tail).
fn progress(run: &Run<'_>, count: u64) {
    run.shared
        .word(line::ACK + run.index - 1)
        .store(count, Release);
}

/// Fan-out throughput: a ring of 64-byte slots written by the publisher (the leader) and read
/// by every subscriber, each with its own position; the publisher writes slot `i` once every
/// subscriber has read message `i - slots` (it rescans their positions only when its cached
/// minimum says the ring is full). Subscribers share a CPU and yield when the ring is empty.
pub(crate) fn fanout_stream(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let head = s.word(line::HEAD);
    let slots = s.data_words(0, fanout_stream_bytes());
    let n = run.total();
    let ring = STREAM_SLOTS as u64;
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, run.peers as u64)?;
        let mut times = Vec::new();
        let mut min_tail = 0;
        for i in 0..n {
            run.mark_window(i, &mut times);
            if i >= min_tail + ring {
                spin_until(
                    || {
                        min_tail = (0..run.peers)
                            .map(|k| s.word(line::ACK + k).load(Acquire))
                            .min()
                            .unwrap_or(n);
                        i < min_tail + ring
                    },
                    spin_loop,
                )?;
            }
            let base = (i % ring) as usize * 8;
            slots[base].store(i, Relaxed);
            for (k, w) in slots[base + 1..base + 8].iter().enumerate() {
                w.store(i ^ k as u64, Relaxed);
            }
            head.store(i + 1, Release);
        }
        // The last window ends when every subscriber has read every message.
        collect_acks(run, n)?;
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        let mut seen_head = 0;
        for i in 0..n {
            if seen_head == i {
                spin_until(|| head.load(Acquire) > i, yield_now)?;
                seen_head = head.load(Acquire);
            }
            let base = (i % ring) as usize * 8;
            let mut sum = 0u64;
            for w in &slots[base..base + 8] {
                sum = sum.wrapping_add(w.load(Relaxed));
            }
            std::hint::black_box(sum);
            if slots[base].load(Relaxed) != i {
                return Err(format!("floor fan-out ring: expected {i}").into());
            }
            progress(run, i + 1);
        }
        Ok(None)
    }
}

/// Bytes of one buffer of the sized ping-pong: the sequence word, then the message, rounded
/// up to whole pages (each buffer starts on a page of its own).
fn region(bytes: usize) -> usize {
    (8 + bytes).div_ceil(4096) * 4096
}

/// How many buffers each direction of the sized ping-pong goes round, one run each: with one,
/// every message overwrites the lines the other side has just read (they are in both caches,
/// so each store must invalidate the other's copy); with more, the writer finds lines the
/// other side read longer ago (for big messages, no longer in its cache), as a library's ring
/// of slots does. The best of the runs is the floor.
pub(crate) const PINGPONG_BUFFERS: [usize; 3] = [1, 4, 16];

/// Busy ping-pong of `run.bytes`-byte messages. Each buffer is a sequence word followed by
/// the message in the same cache line (8 bytes: one line, as the two-word floor), written in
/// full before the word is set (Release) and read in full after it is seen (Acquire); message
/// `i` goes in buffer `i % k` of its direction, once per entry `k` of [`PINGPONG_BUFFERS`]
/// (each a whole run), and the fastest run is reported.
pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (bytes, region) = (run.bytes, region(run.bytes));
    let most = PINGPONG_BUFFERS[PINGPONG_BUFFERS.len() - 1];
    // Buffer `j` of direction `d` (0: the leader's pings, 1: the peer's pongs).
    let buffer = |d: usize, j: usize| (d * most + j) * region;
    let (mine, theirs) = if leader { (0, 1) } else { (1, 0) };
    let seq = |d: usize, j: usize| &s.data_words(buffer(d, j), 8)[0];
    let send = |j: usize, i: u64| {
        // SAFETY: the other side reads this buffer only after our sequence store below, and
        // it finished reading the buffer's previous message before it sent the message we
        // just read (the leader writes ping i after reading pong i - 1, which the peer sent
        // after reading ping i - 1; likewise the peer): nobody else touches these bytes now.
        fill(unsafe { s.block_mut(buffer(mine, j) + 8, bytes) }, i);
        seq(mine, j).store(i, Release);
    };
    let recv = |j: usize, i: u64| -> Res<()> {
        let word = seq(theirs, j);
        spin_until(|| word.load(Acquire) == i, spin_loop)?;
        // SAFETY: the other side wrote message i before its Release store of `i` (seen with
        // Acquire) and does not write this buffer again until it has read our answer.
        consume(unsafe { s.block_mut(buffer(theirs, j) + 8, bytes) }, i)
    };
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
    }
    let n = run.total();
    let mut best: Option<Vec<u64>> = None;
    for (phase, &k) in PINGPONG_BUFFERS.iter().enumerate() {
        let base = phase as u64 * n;
        let mut rt = Vec::with_capacity(run.iters as usize);
        for i in base + 1..=base + n {
            let j = i as usize % k;
            if leader {
                let t = Instant::now();
                send(j, i);
                recv(j, i)?;
                if i - base > run.warmup {
                    rt.push(t.elapsed().as_nanos() as u64);
                }
            } else {
                recv(j, i)?;
                send(j, i);
            }
        }
        let took = |v: &[u64]| v.iter().sum::<u64>();
        if best.as_ref().is_none_or(|b| took(&rt) < took(b)) {
            best = Some(rt);
        }
    }
    Ok(if leader {
        best.map(Measured::RoundTrips)
    } else {
        None
    })
}

/// How many slots of the sized SPSC ring the producer may fill ahead of the consumer, one run
/// each (0: the whole ring, [`msg_slots`]): few slots are reused while still in cache (the
/// bulk floor's cache-hot hand-off), many let the two sides run apart. The best run is the
/// floor.
pub(crate) const STREAM_IN_FLIGHT: [usize; 4] = [1, 2, 4, 0];

/// A bare SPSC ring of `run.bytes`-byte slots ([`msg_slots`] of them), each side caching the
/// other's position; the producer (the peer) writes every byte, the consumer (the leader)
/// reads every byte, both through plain slices (vectorised) under the ring's hand-off. One run
/// per entry of [`STREAM_IN_FLIGHT`]; the windows of the fastest are reported.
pub(crate) fn stream(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (head, tail) = (s.word(line::HEAD), s.word(line::TAIL));
    let bytes = run.bytes;
    let n = run.total();
    let ring = |k: usize| if k == 0 { msg_slots(bytes) } else { k } as u64;
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let mut best: Option<Vec<u64>> = None;
        for (phase, &k) in STREAM_IN_FLIGHT.iter().enumerate() {
            let (base, slots) = (phase as u64 * n, ring(k));
            let mut times = Vec::new();
            let mut seen_head = base;
            for i in 0..n {
                run.mark_window(i, &mut times);
                if seen_head == base + i {
                    spin_until(|| head.load(Acquire) > base + i, spin_loop)?;
                    seen_head = head.load(Acquire);
                }
                // SAFETY: the producer published message i (Release on `head`, seen with
                // Acquire) and does not write its slot again until our `tail` store passes it.
                let slot = unsafe { s.block_mut((i % slots) as usize * bytes, bytes) };
                consume(slot, i)?;
                tail.store(base + i + 1, Release);
            }
            times.push(now_ns());
            let took = |t: &[u64]| t.last().copied().unwrap_or(0) - t.first().copied().unwrap_or(0);
            if best.as_ref().is_none_or(|b| took(&times) < took(b)) {
                best = Some(times);
            }
        }
        Ok(best.map(Measured::Windows))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        for (phase, &k) in STREAM_IN_FLIGHT.iter().enumerate() {
            let (base, slots) = (phase as u64 * n, ring(k));
            // The previous run's messages are all read before the ring changes size.
            spin_until(|| tail.load(Acquire) == base, spin_loop)?;
            let mut seen_tail = base;
            for i in 0..n {
                if base + i >= seen_tail + slots {
                    spin_until(|| tail.load(Acquire) + slots > base + i, spin_loop)?;
                    seen_tail = tail.load(Acquire);
                }
                // SAFETY: the consumer read message i - slots from this slot and released it
                // (Release on `tail`, seen with Acquire); it reads it again only after our
                // `head` store below.
                fill(
                    unsafe { s.block_mut((i % slots) as usize * bytes, bytes) },
                    i,
                );
                head.store(base + i + 1, Release);
            }
        }
        Ok(None)
    }
}

/// Bytes per cell of the several-publisher ring: the sequence word, then the 64-byte message
/// (two cache lines, as the work-queue floor's cells).
const CELL_BYTES: usize = 128;
/// Polls a blocked publisher spins through before it yields its CPU between polls (the
/// publishers share one CPU).
const SPINS: u32 = 64;

/// Several producers into one consumer: Dmitry Vyukov's bounded MPMC ring with one consumer.
/// A publisher claims position `p` by CAS on the enqueue position once cell `p`'s sequence is
/// `p`, writes the message and publishes with sequence `p + 1`; the one consumer (the leader)
/// needs no CAS: it waits for sequence `p + 1`, reads, and frees the cell with `p + slots`.
/// Blocked publishers spin, then yield (they share a CPU); no futex and no fence: nobody
/// ever sleeps. No robustness: a publisher that dies between claim and publish stops it.
pub(crate) fn publishers(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let enq = s.word(line::Q_ENQ);
    let cells = s.data_words(0, publishers_bytes());
    let ring = STREAM_SLOTS as u64;
    let words = CELL_BYTES / 8;
    let seq = |p: u64| -> &AtomicU64 { &cells[(p % ring) as usize * words] };
    let payload = |p: u64| {
        let base = (p % ring) as usize * words;
        &cells[base + 1..base + 9]
    };
    let n = run.total();
    if leader {
        for p in 0..ring {
            seq(p).store(p, Relaxed);
        }
        enq.store(0, Relaxed);
        ctl::leader_ready(s);
        ctl::wait_ready(s, run.peers as u64)?;
        let mut next = vec![0u64; run.peers + 1];
        let mut times = Vec::new();
        for p in 0..n {
            run.mark_window(p, &mut times);
            spin_until(|| seq(p).load(Acquire) == p + 1, spin_loop)?;
            let w = payload(p);
            let item: [u64; 8] = std::array::from_fn(|k| w[k].load(Relaxed));
            seq(p).store(p + ring, Release);
            check_tagged(&item, &mut next)?;
        }
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        let me = run.index as u64;
        let start = Instant::now();
        for j in 0..share(n, run.peers, run.index) {
            let mut tries = 0u32;
            let mut pos = enq.load(Relaxed);
            let pos = loop {
                let dif = seq(pos).load(Acquire).wrapping_sub(pos) as i64;
                if dif == 0 {
                    match enq.compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                        Ok(_) => break pos,
                        Err(now) => pos = now,
                    }
                } else if dif < 0 {
                    // Full: the consumer has not freed this cell yet.
                    tries = tries.wrapping_add(1);
                    if tries < SPINS {
                        spin_loop();
                    } else {
                        yield_now();
                    }
                    if tries % 1024 == 0 && start.elapsed() > ctl::PEER_TIMEOUT {
                        return Err("timed out waiting for a peer process".into());
                    }
                    pos = enq.load(Relaxed);
                } else {
                    pos = enq.load(Relaxed);
                }
            };
            for (w, v) in payload(pos).iter().zip(tagged(me, j)) {
                w.store(v, Relaxed);
            }
            seq(pos).store(pos + 1, Release);
        }
        Ok(None)
    }
}

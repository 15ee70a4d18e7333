//! The floors: the bare mechanism each scenario needs, with nothing around it. No library can
//! beat these on the same machine; they tell what the hardware (and kernel) costs.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use shmbus_core::futex;

use crate::ctl::{self, line, now_ns, spin_until};
use crate::{Measured, Res, Run};

/// Slots of the floor SPSC ring (64 bytes each).
pub(crate) const RING_SLOTS: usize = 256;
/// Blocks of the floor bulk hand-off.
pub(crate) const BULK_BLOCKS: usize = 4;

/// Ping-pong on two words; receivers poll, or sleep on the word with a futex.
pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool, blocking: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (ping, pong) = (s.word32(line::PING), s.word32(line::PONG));
    let (mine, theirs) = if leader { (ping, pong) } else { (pong, ping) };
    let wait_for = |v: u32| -> Res<()> {
        if blocking {
            let deadline = Instant::now() + ctl::PEER_TIMEOUT;
            loop {
                let cur = theirs.load(Acquire);
                if cur == v {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("timed out waiting for a peer process".into());
                }
                futex::wait(theirs, cur, Some(Duration::from_millis(100)));
            }
        } else {
            spin_until(|| theirs.load(Acquire) == v, spin_loop)
        }
    };
    let send = |v: u32| {
        mine.store(v, Release);
        if blocking {
            futex::wake(mine, 1);
        }
    };
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
    }
    let mut rt = Vec::with_capacity(run.iters as usize);
    for i in 1..=run.total() as u32 {
        if leader {
            if blocking {
                ctl::settle();
            }
            let t = Instant::now();
            send(i);
            wait_for(i)?;
            if u64::from(i) > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            wait_for(i)?;
            send(i);
        }
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// A bare single-producer single-consumer ring of 64-byte slots (Lamport, with each side
/// caching the other's position).
pub(crate) fn stream64(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (head, tail) = (s.word(line::HEAD), s.word(line::TAIL));
    let slots = s.data_words(0, RING_SLOTS * 64);
    let n = run.total();
    if leader {
        // The consumer.
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let mut times = Vec::new();
        let mut seen_head = 0;
        for i in 0..n {
            run.mark_window(i, &mut times);
            if seen_head == i {
                spin_until(|| head.load(Acquire) > i, spin_loop)?;
                seen_head = head.load(Acquire);
            }
            let base = (i as usize % RING_SLOTS) * 8;
            let mut sum = 0u64;
            for w in &slots[base..base + 8] {
                sum = sum.wrapping_add(w.load(Relaxed));
            }
            if slots[base].load(Relaxed) != i {
                return Err(format!("floor ring: expected {i}").into());
            }
            black_box(sum);
            tail.store(i + 1, Release);
        }
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        let mut seen_tail = 0;
        for i in 0..n {
            if i >= seen_tail + RING_SLOTS as u64 {
                spin_until(|| tail.load(Acquire) + RING_SLOTS as u64 > i, spin_loop)?;
                seen_tail = tail.load(Acquire);
            }
            let base = (i as usize % RING_SLOTS) * 8;
            slots[base].store(i, Relaxed);
            for (k, w) in slots[base + 1..base + 8].iter().enumerate() {
                w.store(i ^ k as u64, Relaxed);
            }
            head.store(i + 1, Release);
        }
        Ok(None)
    }
}

/// Writes every word of `block` (what a producer of real data does at least).
pub(crate) fn fill(block: &mut [u64], seq: u64) {
    for (k, w) in block.iter_mut().enumerate() {
        *w = seq ^ k as u64;
    }
}

/// Reads every word of `block` and checks the first.
pub(crate) fn consume(block: &[u64], seq: u64) -> Res<()> {
    black_box(block.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
    if block.first() != Some(&seq) {
        return Err(format!("bulk block {seq} damaged").into());
    }
    Ok(())
}

/// Hands blocks of `run.bytes` from the producer to the consumer through a ring of
/// [`BULK_BLOCKS`] blocks in the shared mapping.
pub(crate) fn bulk(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (head, tail) = (s.word(line::HEAD), s.word(line::TAIL));
    let offset = |i: u64| (i as usize % BULK_BLOCKS) * run.bytes;
    let n = run.total();
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            spin_until(|| head.load(Acquire) > i, spin_loop)?;
            // SAFETY: the producer published block i (Release on `head`, seen with Acquire) and
            // does not touch it again until our `tail` store below hands it back.
            consume(unsafe { s.block_mut(offset(i), run.bytes) }, i)?;
            tail.store(i + 1, Release);
        }
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        for i in 0..n {
            spin_until(|| tail.load(Acquire) + BULK_BLOCKS as u64 > i, spin_loop)?;
            // SAFETY: the consumer handed block i back (Release on `tail`, seen with Acquire)
            // and does not read it again until our `head` store below.
            fill(unsafe { s.block_mut(offset(i), run.bytes) }, i);
            head.store(i + 1, Release);
        }
        Ok(None)
    }
}

/// Gives up the CPU between polls when several pollers share one (fan-out puts four
/// subscribers on one CPU; spinning through whole time slices would measure the scheduler).
pub(crate) fn yield_now() {
    std::thread::yield_now();
}

/// Waits until every subscriber acknowledged message `i`, then returns the latest receive time.
pub(crate) fn collect_acks(run: &Run<'_>, i: u64) -> Res<u64> {
    let s = run.shared;
    let mut last = 0;
    for k in 0..run.peers {
        spin_until(|| s.word(line::ACK + k).load(Acquire) >= i, spin_loop)?;
        last = last.max(s.word(line::RECV_NS + k).load(Relaxed));
    }
    Ok(last)
}

/// A subscriber's acknowledgement of message `i`, received at `recv_ns`.
pub(crate) fn ack(run: &Run<'_>, i: u64, recv_ns: u64) {
    let k = run.index - 1;
    run.shared.word(line::RECV_NS + k).store(recv_ns, Relaxed);
    run.shared.word(line::ACK + k).store(i, Release);
}

/// One word, written by the publisher and polled by every subscriber.
pub(crate) fn fanout(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let seq = s.word(line::FAN_SEQ);
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, run.peers as u64)?;
        let mut lat = Vec::with_capacity(run.iters as usize);
        for i in 1..=run.total() {
            let t0 = now_ns();
            seq.store(i, Release);
            let last = collect_acks(run, i)?;
            if i > run.warmup {
                lat.push(last.saturating_sub(t0));
            }
        }
        Ok(Some(Measured::Latencies(lat)))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        for i in 1..=run.total() {
            spin_until(|| seq.load(Acquire) >= i, yield_now)?;
            ack(run, i, now_ns());
        }
        Ok(None)
    }
}

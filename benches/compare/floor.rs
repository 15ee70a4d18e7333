//! The floors: the bare mechanism each scenario needs, with nothing around it. No library can
//! beat these on the same machine; they tell what the hardware (and kernel) costs.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{fence, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use shmbus_core::futex;

use crate::ctl::{self, line, now_ns, spin_until, RxMeter, Shared};
use crate::{Measured, Res, Run};

/// Slots of the floor SPSC ring (64 bytes each).
pub(crate) const RING_SLOTS: usize = 256;
/// Blocks of the floor bulk hand-off.
pub(crate) const BULK_BLOCKS: usize = 4;
const _: () = assert!(BULK_IN_FLIGHT[BULK_IN_FLIGHT.len() - 1] <= BULK_BLOCKS);

/// Ping-pong on two words; receivers poll.
pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (ping, pong) = (s.word32(line::PING), s.word32(line::PONG));
    let (mine, theirs) = if leader { (ping, pong) } else { (pong, ping) };
    let wait_for = |v: u32| spin_until(|| theirs.load(Acquire) == v, spin_loop);
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
    }
    let mut rt = Vec::with_capacity(run.iters as usize);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() as u32 {
        if leader {
            let t = Instant::now();
            mine.store(i, Release);
            wait_for(i)?;
            if u64::from(i) > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            rx.start_at(u64::from(i), run.warmup + 1);
            wait_for(i)?;
            mine.store(i, Release);
        }
    }
    if !leader {
        rx.report(s, run.index)?;
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// The sender's side of `wake_cross_core` and `wake_same_core`, every system: before message
/// `i` it waits [`ctl::settle`] (the receiver falls asleep), reads the clock, calls `send(i)`,
/// and waits, yielding (the receiver may share its CPU), for the receiver's acknowledgement,
/// which carries the time the receiver held the message ([`wake_receiver`]). The sample is
/// the difference: one hand-off to a sleeping receiver, with nothing coming back through the
/// system under test (a reply would find the sender awake, or spinning).
pub(crate) fn wake_sender(run: &Run<'_>, mut send: impl FnMut(u64) -> Res<()>) -> Res<Measured> {
    let mut lat = Vec::with_capacity(run.iters as usize);
    for i in 1..=run.total() {
        ctl::settle();
        let t0 = now_ns();
        send(i)?;
        let t1 = collect_acks_idle(run, i, yield_now)?;
        if i > run.warmup {
            lat.push(t1.saturating_sub(t0));
        }
    }
    Ok(Measured::Latencies(lat))
}

/// The receiver's side of `wake_cross_core` and `wake_same_core`: `recv(i)` blocks until
/// message `i` is there (and checks it); then the receive time goes back in a control line.
/// Its sleeps and CPU time over the measured messages go to the leader ([`RxMeter`]).
pub(crate) fn wake_receiver(run: &Run<'_>, mut recv: impl FnMut(u64) -> Res<()>) -> Res<()> {
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        rx.start_at(i, run.warmup + 1);
        recv(i)?;
        ack(run, i, now_ns());
    }
    rx.report(run.shared, run.index)
}

/// A hand-off to a sleeping receiver, the bare mechanism: the sender stores the message's
/// number in a futex word and wakes it (the receiver always sleeps here: the wake is never
/// wasted); the receiver sleeps on the word with `FUTEX_WAIT` as soon as it finds it unchanged.
pub(crate) fn wake(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let word = s.word32(line::PING);
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let m = wake_sender(run, |i| {
            word.store(i as u32, Release);
            futex::wake(word, 1);
            Ok(())
        })?;
        return Ok(Some(m));
    }
    ctl::wait_leader(s)?;
    ctl::announce_ready(s);
    wake_receiver(run, |i| {
        let deadline = Instant::now() + ctl::PEER_TIMEOUT;
        loop {
            let cur = word.load(Acquire);
            if cur == i as u32 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for a peer process".into());
            }
            futex::wait(word, cur, Some(Duration::from_millis(100)));
        }
    })?;
    Ok(None)
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
        let mut rx = RxMeter::default();
        for i in 0..n {
            run.mark_window(i, &mut times);
            rx.start_at(i, run.warmup);
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
        rx.report(s, run.index)?;
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

/// How many blocks the bulk floor keeps in flight, one run each: with one, the producer
/// always writes the block the consumer released last (the cache-hot hand-off of a LIFO pool);
/// with more, the blocks go round. The best of the runs is the floor.
pub(crate) const BULK_IN_FLIGHT: [usize; 3] = [1, 2, 4];

/// Hands blocks of `run.bytes` from the producer to the consumer, once per entry of
/// [`BULK_IN_FLIGHT`] (each a whole run: warm-up and measured messages), and reports the
/// windows of the fastest: the floor is the best hand-off the bare mechanism achieves.
pub(crate) fn bulk(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let (head, tail) = (s.word(line::HEAD), s.word(line::TAIL));
    let n = run.total();
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let mut best: Option<(Vec<u64>, ctl::Usage)> = None;
        for (phase, &k) in BULK_IN_FLIGHT.iter().enumerate() {
            let base = phase as u64 * n;
            let mut times = Vec::new();
            let mut rx = RxMeter::default();
            for i in 0..n {
                run.mark_window(i, &mut times);
                rx.start_at(i, run.warmup);
                spin_until(|| head.load(Acquire) > base + i, spin_loop)?;
                // SAFETY: the producer published block i (Release on `head`, seen with Acquire)
                // and does not touch it again until our `tail` store below hands it back.
                let block = unsafe { s.block_mut((i as usize % k) * run.bytes, run.bytes) };
                consume(block, i)?;
                tail.store(base + i + 1, Release);
            }
            times.push(now_ns());
            let used = rx.so_far()?;
            let took = |t: &[u64]| t.last().copied().unwrap_or(0) - t.first().copied().unwrap_or(0);
            if best.as_ref().is_none_or(|(b, _)| took(&times) < took(b)) {
                best = Some((times, used));
            }
        }
        // The receiver's cost is that of the run the figure comes from.
        let (times, used) = best.ok_or("no bulk run")?;
        ctl::report_rx(s, run.index, used);
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        for (phase, &k) in BULK_IN_FLIGHT.iter().enumerate() {
            let base = phase as u64 * n;
            // The previous run's blocks are all back before the block count changes.
            spin_until(|| tail.load(Acquire) == base, spin_loop)?;
            for i in 0..n {
                spin_until(|| tail.load(Acquire) + k as u64 > base + i, spin_loop)?;
                // SAFETY: the consumer handed block i back (Release on `tail`, seen with
                // Acquire) and does not read it again until our `head` store below.
                let block = unsafe { s.block_mut((i as usize % k) * run.bytes, run.bytes) };
                fill(block, i);
                head.store(base + i + 1, Release);
            }
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
    collect_acks_idle(run, i, spin_loop)
}

/// [`collect_acks`], calling `idle` between polls.
pub(crate) fn collect_acks_idle(run: &Run<'_>, i: u64, mut idle: impl FnMut()) -> Res<u64> {
    let s = run.shared;
    let mut last = 0;
    for k in 0..run.peers {
        spin_until(|| s.word(line::ACK + k).load(Acquire) >= i, &mut idle)?;
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
        let mut rx = RxMeter::default();
        for i in 1..=run.total() {
            rx.start_at(i, run.warmup + 1);
            spin_until(|| seq.load(Acquire) >= i, yield_now)?;
            ack(run, i, now_ns());
        }
        rx.report(s, run.index)?;
        Ok(None)
    }
}

/// Bytes per cell of the work-queue floor's rings: the sequence word, then the payload (two
/// cache lines, so that a 64-byte item fits beside its sequence word).
pub(crate) const CELL_BYTES: usize = 128;
/// Cells of the 64-byte work-queue floor (as many as shmbus's queue has slots).
pub(crate) const QUEUE_SLOTS: usize = 256;
/// Blocks of the 4 MiB work-queue floor (as many as shmbus's array queue has slots).
pub(crate) const QUEUE_BLOCKS: usize = 8;
/// Where the free-block ring starts in the data area (the ring of full blocks is at 0).
const FREE_RING_OFFSET: usize = 64 << 10;
/// Where the 4 MiB work-queue floor's blocks start in the data area (page-aligned).
pub(crate) const QUEUE_BLOCKS_OFFSET: usize = 1 << 20;
/// A payload word no item has: the producer's "no more items" to each consumer.
const STOP: u64 = u64::MAX;
/// Polls a waiting side of the work-queue floor spins through before it yields its CPU...
const SPINS: u32 = 128;
/// ...and polls it yields between before it sleeps on a futex.
const YIELDS: u32 = 64;
/// How long a floor waiter sleeps at most before it polls again.
const NAP: Duration = Duration::from_millis(1);

/// Something a floor waiter can sleep until: a futex word bumped when it happens, and the
/// number of sleepers (so that the fast path makes no system call while nobody sleeps).
struct Event<'a> {
    word: &'a AtomicU32,
    sleepers: &'a AtomicU32,
}

impl<'a> Event<'a> {
    /// The event on control lines `l` (word) and `l + 1` (sleepers).
    fn new(s: &'a Shared, l: usize) -> Event<'a> {
        Event {
            word: s.word32(l),
            sleepers: s.word32(l + 1),
        }
    }

    /// After the change a sleeper waits for: wakes the sleepers, if any. Dekker with
    /// [`wait_for`]: change, fence, read the sleepers; the sleeper counts itself in, fences,
    /// tries again, and sleeps only while the word is unchanged.
    fn notify(&self) {
        fence(SeqCst);
        if self.sleepers.load(Relaxed) > 0 {
            self.word.fetch_add(1, Relaxed);
            futex::wake(self.word, u32::MAX);
        }
    }
}

/// Dmitry Vyukov's bounded multi-producer multi-consumer ring, in the shared mapping: cell `i`
/// holds a sequence word and a payload; a producer claims position `p` by CAS on the enqueue
/// position once cell `p % n`'s sequence is `p`, writes, and publishes with sequence `p + 1`; a
/// consumer claims `p` once the sequence is `p + 1`, reads, and frees the cell with sequence
/// `p + n`. Waiters spin, then yield, then sleep on a futex (a floor that only spins slows the
/// other process's copying on this VM's vCPUs, and one that never yields cannot share a CPU
/// with a process it waits for; one that sleeps at once pays a wake-up per 64-byte item when it
/// shares). No lock and no
/// robustness: a process that dies between claim and publish stops the ring. The best a work
/// queue could do, not a usable one.
struct Mpmc<'a> {
    enq: &'a AtomicU64,
    deq: &'a AtomicU64,
    cells: &'a [AtomicU64],
    mask: u64,
    /// An item was published.
    pushed: Event<'a>,
    /// A cell was freed.
    popped: Event<'a>,
}

impl<'a> Mpmc<'a> {
    /// `cells` cells (a power of two) from `offset` of the data area, positions on control
    /// lines `enq` and `deq`, events on the four lines from `events`.
    fn new(
        s: &'a Shared,
        enq: usize,
        deq: usize,
        events: usize,
        offset: usize,
        cells: usize,
    ) -> Mpmc<'a> {
        assert!(cells.is_power_of_two());
        Mpmc {
            enq: s.word(enq),
            deq: s.word(deq),
            cells: s.data_words(offset, cells * CELL_BYTES),
            mask: cells as u64 - 1,
            pushed: Event::new(s, events),
            popped: Event::new(s, events + 2),
        }
    }

    /// Makes the ring empty (the leader, before any peer starts).
    fn init(&self) {
        for i in 0..=self.mask {
            self.seq(i).store(i, Relaxed);
        }
        self.enq.store(0, Relaxed);
        self.deq.store(0, Relaxed);
    }

    fn seq(&self, pos: u64) -> &AtomicU64 {
        &self.cells[(pos & self.mask) as usize * (CELL_BYTES / 8)]
    }

    /// The payload words of the cell of position `pos`.
    fn payload(&self, pos: u64) -> &[AtomicU64] {
        let base = (pos & self.mask) as usize * (CELL_BYTES / 8);
        &self.cells[base + 1..base + CELL_BYTES / 8]
    }

    /// Claims the next position to write, if its cell is free.
    fn try_claim_push(&self) -> Option<u64> {
        let mut pos = self.enq.load(Relaxed);
        loop {
            let dif = self.seq(pos).load(Acquire).wrapping_sub(pos) as i64;
            if dif == 0 {
                match self
                    .enq
                    .compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed)
                {
                    Ok(_) => return Some(pos),
                    Err(now) => pos = now,
                }
            } else if dif < 0 {
                return None; // full
            } else {
                pos = self.enq.load(Relaxed);
            }
        }
    }

    /// Publishes the item written at the claimed position `pos`.
    fn publish(&self, pos: u64) {
        self.seq(pos).store(pos + 1, Release);
        self.pushed.notify();
    }

    /// Claims the next position to read, if its item is published.
    fn try_claim_pop(&self) -> Option<u64> {
        let mut pos = self.deq.load(Relaxed);
        loop {
            let dif = self.seq(pos).load(Acquire).wrapping_sub(pos + 1) as i64;
            if dif == 0 {
                match self
                    .deq
                    .compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed)
                {
                    Ok(_) => return Some(pos),
                    Err(now) => pos = now,
                }
            } else if dif < 0 {
                return None; // empty
            } else {
                pos = self.deq.load(Relaxed);
            }
        }
    }

    /// Frees the cell of the claimed position `pos` once its payload is read.
    fn free(&self, pos: u64) {
        self.seq(pos).store(pos + self.mask + 1, Release);
        self.popped.notify();
    }

    /// Waits for a position to write (see [`wait_for`]).
    fn claim_push(&self) -> Res<u64> {
        wait_for(&self.popped, || self.try_claim_push())
    }

    /// Waits for a position to read (see [`wait_for`]).
    fn claim_pop(&self) -> Res<u64> {
        wait_for(&self.pushed, || self.try_claim_pop())
    }
}

/// Retries `attempt` until it gives a value: [`SPINS`] polls spinning, [`YIELDS`] polls
/// yielding the CPU (a process sharing it runs at once), then sleeps on `event` between tries
/// (at most [`NAP`] each). Fails after [`ctl::PEER_TIMEOUT`].
fn wait_for<R>(event: &Event<'_>, mut attempt: impl FnMut() -> Option<R>) -> Res<R> {
    for k in 0..SPINS + YIELDS {
        if let Some(r) = attempt() {
            return Ok(r);
        }
        if k < SPINS {
            spin_loop();
        } else {
            yield_now();
        }
    }
    let start = Instant::now();
    loop {
        let seen = event.word.load(SeqCst);
        if let Some(r) = attempt() {
            return Ok(r);
        }
        event.sleepers.fetch_add(1, Relaxed);
        fence(SeqCst);
        let got = attempt();
        if got.is_none() {
            futex::wait(event.word, seen, Some(NAP));
        }
        event.sleepers.fetch_sub(1, Relaxed);
        if let Some(r) = got {
            return Ok(r);
        }
        if start.elapsed() > ctl::PEER_TIMEOUT {
            return Err("timed out waiting for a peer process".into());
        }
    }
}

/// A producer's 64-byte item `i`: word `k` is `i ^ k`.
pub(crate) fn item64(i: u64) -> [u64; 8] {
    std::array::from_fn(|k| i ^ k as u64)
}

/// A consumer's check of a 64-byte item: well formed, and later than the one it took before
/// (one producer, first in first out). Returns the item's number.
pub(crate) fn check_item64(item: &[u64; 8], last: Option<u64>) -> Res<u64> {
    let i = item[0];
    black_box(item.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
    if *item != item64(i) || last.is_some_and(|l| l >= i) {
        return Err(format!("work item {i} damaged or out of order (after {last:?})").into());
    }
    Ok(i)
}

/// The leader's end of a work-queue run: waits for every consumer, closes the last window and
/// checks that the consumers took exactly the `run.total()` items.
pub(crate) fn end_queue_run(run: &Run<'_>, mut times: Vec<u64>) -> Res<Option<Measured>> {
    let taken = ctl::wait_consumers(run.shared, run.peers as u64)?;
    times.push(now_ns());
    if taken != run.total() {
        return Err(format!("consumers took {taken} of {} items", run.total()).into());
    }
    Ok(Some(Measured::Windows(times)))
}

/// A work queue of 64-byte items in a Vyukov ring: one producer (the leader), `run.peers`
/// consumers, each item to exactly one.
pub(crate) fn queue64(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let ring = Mpmc::new(s, line::Q_ENQ, line::Q_DEQ, line::Q_EVENTS, 0, QUEUE_SLOTS);
    if leader {
        ring.init();
        ctl::leader_ready(s);
        ctl::wait_ready(s, run.peers as u64)?;
        let mut times = Vec::new();
        for i in 0..run.total() {
            run.mark_window(i, &mut times);
            let pos = ring.claim_push()?;
            for (w, v) in ring.payload(pos).iter().zip(item64(i)) {
                w.store(v, Relaxed);
            }
            ring.publish(pos);
        }
        for _ in 0..run.peers {
            let pos = ring.claim_push()?;
            ring.payload(pos)[0].store(STOP, Relaxed);
            ring.publish(pos);
        }
        end_queue_run(run, times)
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        let (mut count, mut last) = (0u64, None);
        loop {
            let pos = ring.claim_pop()?;
            let words = ring.payload(pos);
            let item: [u64; 8] = std::array::from_fn(|k| words[k].load(Relaxed));
            ring.free(pos);
            if item[0] == STOP {
                break;
            }
            last = Some(check_item64(&item, last)?);
            count += 1;
        }
        ctl::finish_consumer(s, count);
        Ok(None)
    }
}

/// A work queue of `run.bytes` blocks: the producer (the leader) takes a free block from one
/// Vyukov ring, writes every byte in place and puts its index in a second ring; a consumer
/// takes it from there, reads every byte in place and gives the block back to the free ring.
pub(crate) fn queue_arrays(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let s = run.shared;
    let full = Mpmc::new(s, line::Q_ENQ, line::Q_DEQ, line::Q_EVENTS, 0, QUEUE_BLOCKS);
    let free = Mpmc::new(
        s,
        line::FREE_ENQ,
        line::FREE_DEQ,
        line::Q_EVENTS + 4,
        FREE_RING_OFFSET,
        QUEUE_BLOCKS,
    );
    let block_offset = |b: u64| -> Res<usize> {
        if b >= QUEUE_BLOCKS as u64 {
            return Err(format!("block index {b} out of range").into());
        }
        Ok(QUEUE_BLOCKS_OFFSET + b as usize * run.bytes)
    };
    if leader {
        full.init();
        free.init();
        // As few blocks as keep everyone busy (one being filled, one in each consumer's
        // hands): each goes round while still in cache, as the fastest pool would hand them
        // out. All eight in turn left the floor below shmbus's queue in CI (1.3x).
        let circulating = (run.peers + 1).min(QUEUE_BLOCKS);
        for b in 0..circulating as u64 {
            let pos = free.try_claim_push().ok_or("the free ring is full")?;
            free.payload(pos)[0].store(b, Relaxed);
            free.publish(pos);
        }
        ctl::leader_ready(s);
        ctl::wait_ready(s, run.peers as u64)?;
        let mut times = Vec::new();
        for i in 0..run.total() {
            run.mark_window(i, &mut times);
            let pos = free.claim_pop()?;
            let b = free.payload(pos)[0].load(Relaxed);
            free.free(pos);
            // SAFETY: block `b` came off the free ring: its last consumer finished reading it
            // before putting it there (Release on the cell's sequence, seen with Acquire), and
            // nobody touches it until it goes on the full ring below.
            fill(unsafe { s.block_mut(block_offset(b)?, run.bytes) }, i);
            let pos = full.claim_push()?;
            full.payload(pos)[0].store(b, Relaxed);
            full.payload(pos)[1].store(i, Relaxed);
            full.publish(pos);
        }
        for _ in 0..run.peers {
            let pos = full.claim_push()?;
            full.payload(pos)[1].store(STOP, Relaxed);
            full.publish(pos);
        }
        end_queue_run(run, times)
    } else {
        ctl::wait_leader(s)?;
        ctl::announce_ready(s);
        let (mut count, mut last) = (0u64, None::<u64>);
        loop {
            let pos = full.claim_pop()?;
            let (b, i) = (
                full.payload(pos)[0].load(Relaxed),
                full.payload(pos)[1].load(Relaxed),
            );
            full.free(pos);
            if i == STOP {
                break;
            }
            if last.is_some_and(|l| l >= i) {
                return Err(format!("block {i} out of order (after {last:?})").into());
            }
            // SAFETY: the producer wrote block `b` before publishing its index (Release, seen
            // with Acquire) and neither it nor another consumer touches it until we put it
            // back on the free ring below.
            consume(unsafe { s.block_mut(block_offset(b)?, run.bytes) }, i)?;
            let pos = free.claim_push()?;
            free.payload(pos)[0].store(b, Relaxed);
            free.publish(pos);
            last = Some(i);
            count += 1;
        }
        ctl::finish_consumer(s, count);
        Ok(None)
    }
}

/// The leader's side of the wake-up scenarios that wait on many topics, for every system:
/// before message `i` it busy-waits [`ctl::WAITSET_GAP`] (the receiver falls asleep), then
/// calls `send(i, topic, now)` for topic `i % topics`, and waits (polling) for the receiver's
/// acknowledgement, which carries the latency the receiver measured from the send time in the
/// message to its wake-up.
pub(crate) fn wake_leader(
    run: &Run<'_>,
    topics: usize,
    mut send: impl FnMut(u64, usize, u64) -> Res<()>,
) -> Res<Measured> {
    let mut lat = Vec::with_capacity(run.iters as usize);
    for i in 1..=run.total() {
        ctl::busy_wait(ctl::WAITSET_GAP);
        send(i, i as usize % topics, now_ns())?;
        let l = collect_acks(run, i)?;
        if i > run.warmup {
            lat.push(l);
        }
    }
    Ok(Measured::Latencies(lat))
}

/// The receiver's acknowledgement of message `i`, sent at `sent_ns` (read from the message):
/// the latency from then to now.
pub(crate) fn ack_wake(run: &Run<'_>, i: u64, sent_ns: u64) {
    ack(run, i, now_ns().saturating_sub(sent_ns));
}

/// Waiting on `topics` topics, the bare mechanism: one futex word per topic (each on its own
/// line), the receiver sleeping on all of them with one `futex_waitv`; the sender stores the
/// send time, bumps the word of the topic and wakes it (always: a floor keeps no count of
/// sleepers).
pub(crate) fn wake_many(run: &mut Run<'_>, leader: bool, topics: usize) -> Res<Option<Measured>> {
    let s = run.shared;
    let stamp = s.word(line::STAMP);
    let words: Vec<&AtomicU32> = (0..topics).map(|j| s.data_word32(j)).collect();
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let m = wake_leader(run, topics, |i, j, sent| {
            stamp.store(sent, Relaxed);
            words[j].store(i as u32, Release);
            futex::wake(words[j], 1);
            Ok(())
        })?;
        return Ok(Some(m));
    }
    ctl::wait_leader(s)?;
    ctl::announce_ready(s);
    let mut expected: Vec<u32> = words.iter().map(|w| w.load(Acquire)).collect();
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        rx.start_at(i, run.warmup + 1);
        let j = i as usize % topics;
        let deadline = Instant::now() + ctl::PEER_TIMEOUT;
        loop {
            let list: Vec<(&AtomicU32, u32)> = words
                .iter()
                .copied()
                .zip(expected.iter().copied())
                .collect();
            futex::wait_many(&list, Some(Duration::from_millis(100)))
                .map_err(|e| format!("futex_waitv: {e:?}"))?;
            let changed = words
                .iter()
                .zip(&expected)
                .position(|(w, &e)| w.load(Acquire) != e);
            if let Some(k) = changed {
                let sent = stamp.load(Relaxed);
                ack_wake(run, i, sent);
                if k != j || words[k].load(Relaxed) != i as u32 {
                    return Err(format!("floor: message {i} on word {k}, expected {j}").into());
                }
                expected[k] = i as u32;
                break;
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for a peer process".into());
            }
        }
    }
    rx.report(s, run.index)?;
    Ok(None)
}

/// Waiting idle on `topics` topics, the bare mechanism: one `futex_waitv` on all their words
/// with the whole wait as its timeout (nothing is ever sent).
pub(crate) fn idle_many(run: &mut Run<'_>, leader: bool, topics: usize) -> Res<Option<Measured>> {
    let s = run.shared;
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        return Ok(Some(Measured::Values(vec![ctl::collect_idle(s)?])));
    }
    ctl::wait_leader(s)?;
    let words: Vec<(&AtomicU32, u32)> = (0..topics).map(|j| (s.data_word32(j), 0)).collect();
    ctl::announce_ready(s);
    let wall = Duration::from_millis(run.iters);
    let (cpu0, t0) = (ctl::process_cpu_ns(), Instant::now());
    while t0.elapsed() < wall {
        futex::wait_many(&words, Some(wall.saturating_sub(t0.elapsed())))
            .map_err(|e| format!("futex_waitv: {e:?}"))?;
    }
    let (cpu, elapsed) = (ctl::process_cpu_ns() - cpu0, t0.elapsed());
    ctl::report_idle(s, cpu, elapsed.as_nanos() as u64);
    Ok(None)
}

/// The cost of waking a sleeper, the bare mechanism: the receiver sleeps in one `futex_waitv`
/// on 16 words, the sender stores to the first and calls `futex_wake` (timed alone, after
/// [`ctl::WAITSET_GAP`], as shmbus's publish is).
pub(crate) fn publish_cost(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    const TOPICS: usize = 16;
    let s = run.shared;
    let words: Vec<&AtomicU32> = (0..TOPICS).map(|j| s.data_word32(j)).collect();
    if leader {
        ctl::leader_ready(s);
        ctl::wait_ready(s, 1)?;
        let mut cost = Vec::with_capacity(run.iters as usize);
        for i in 1..=run.total() {
            ctl::busy_wait(ctl::WAITSET_GAP);
            let t = Instant::now();
            words[0].store(i as u32, Release);
            futex::wake(words[0], 1);
            let ns = t.elapsed().as_nanos() as u64;
            if i > run.warmup {
                cost.push(ns);
            }
        }
        collect_acks(run, run.total())?;
        return Ok(Some(Measured::Latencies(cost)));
    }
    ctl::wait_leader(s)?;
    ctl::announce_ready(s);
    let deadline = Instant::now() + ctl::PEER_TIMEOUT;
    let mut seen = 0;
    while u64::from(seen) < run.total() {
        let list: Vec<(&AtomicU32, u32)> = words
            .iter()
            .enumerate()
            .map(|(j, w)| (*w, if j == 0 { seen } else { 0 }))
            .collect();
        futex::wait_many(&list, Some(Duration::from_millis(100)))
            .map_err(|e| format!("futex_waitv: {e:?}"))?;
        seen = words[0].load(Acquire);
        if Instant::now() > deadline {
            return Err("timed out waiting for a peer process".into());
        }
    }
    ack(run, run.total(), 0);
    Ok(None)
}

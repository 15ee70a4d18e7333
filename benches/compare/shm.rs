//! shmbus, written as a user writes it: typed topics, loan/write/publish, receive in place.

use std::hint::{black_box, spin_loop};
use std::time::{Duration, Instant};

use shmbus::{GetError, Overflow, Publisher, QueueBuilder, RecvError, Subscriber, Topic, WaitSet};

use crate::ctl::{self, now_ns, RxMeter, PEER_TIMEOUT};
use crate::floor::{
    ack, ack_wake, check_item64, collect_acks, consume, end_queue_run, fill, item64, wake_leader,
    wake_receiver, wake_sender, yield_now, QUEUE_BLOCKS, QUEUE_SLOTS,
};
use crate::{Measured, Res, Run};

/// A 64-byte message.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    body: [u64; 7],
}

/// A message of the scenarios that wait on many topics: its number and its send time.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Stamp {
    seq: u64,
    sent_ns: u64,
}

/// Calls `attempt` until it finds a message, calling `idle` between empty attempts; fails after
/// [`PEER_TIMEOUT`].
fn poll_with<R>(
    mut attempt: impl FnMut() -> Result<R, RecvError>,
    mut idle: impl FnMut(),
) -> Res<R> {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        match attempt() {
            Ok(r) => return Ok(r),
            Err(RecvError::Empty) => {}
            Err(e) => return Err(e.into()),
        }
        idle();
        n = n.wrapping_add(1);
        if n % 1024 == 0 && start.elapsed() > PEER_TIMEOUT {
            return Err("timed out waiting for a peer process".into());
        }
    }
}

/// Polls `sub` until a message arrives, calling `idle` between polls.
pub(crate) fn poll<'a, T: bytemuck::Pod>(
    sub: &'a Subscriber<T>,
    idle: impl FnMut(),
) -> Res<shmbus::Sample<'a, T>> {
    poll_with(|| sub.try_recv(), idle)
}

pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let ping = Topic::builder(&format!("{}.ping", run.tag)).capacity(16);
    let pong = Topic::builder(&format!("{}.pong", run.tag)).capacity(16);
    let (out, inp) = if leader { (ping, pong) } else { (pong, ping) };
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let mut publisher = out.publisher::<u64>()?;
    let subscriber = inp.subscriber::<u64>()?;
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
    } else {
        ctl::announce_ready(run.shared);
    }
    let recv = |want: u64| -> Res<()> {
        // An 8-byte value is copied out (`try_recv_copy`: no slot held, nothing shared written
        // but the cursor), as a user receiving small values does.
        let got = poll_with(|| subscriber.try_recv_copy(), spin_loop)?;
        if got != want {
            return Err(format!("expected {want}, got {got}").into());
        }
        Ok(())
    };
    let mut rt = Vec::with_capacity(run.iters as usize);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        if leader {
            let t = Instant::now();
            let mut loan = publisher.loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
            recv(i)?;
            if i > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            rx.start_at(i, run.warmup + 1);
            recv(i)?;
            let mut loan = publisher.loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
        }
    }
    if !leader {
        rx.report(run.shared, run.index)?;
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// A hand-off to a sleeping subscriber: loan, write, publish (which finds it asleep and
/// wakes it); the subscriber blocked in `recv_timeout`.
pub(crate) fn wake(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let topic = Topic::builder(&format!("{}.wake", run.tag)).capacity(16);
    if leader {
        let mut publisher = topic.publisher::<u64>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let m = wake_sender(run, |i| {
            let mut loan = publisher.loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
            Ok(())
        })?;
        return Ok(Some(m));
    }
    ctl::wait_leader(run.shared)?;
    let subscriber = topic.subscriber::<u64>()?;
    ctl::announce_ready(run.shared);
    wake_receiver(run, |i| {
        let got = subscriber.recv_copy_timeout(PEER_TIMEOUT)?;
        if got != i {
            return Err(format!("expected {i}, got {got}").into());
        }
        Ok(())
    })?;
    Ok(None)
}

/// Messages per `send_many_with` of the `shmbus-batch` row of `throughput_64B`.
pub(crate) const SEND_BATCH: u64 = 32;

/// `throughput_64B`: the consumer takes batches (`try_recv_many`); the producer publishes each
/// message through a loan (`batch` = 1) or writes `batch` at a time in place with
/// `send_many_with`.
pub(crate) fn stream64(run: &mut Run<'_>, leader: bool, batch: u64) -> Res<Option<Measured>> {
    let topic = Topic::builder(&format!("{}.stream", run.tag))
        .capacity(256)
        .overflow(Overflow::BackPressure)
        .publish_timeout(Some(PEER_TIMEOUT));
    let n = run.total();
    if leader {
        let sub = topic.subscriber::<Msg64>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let mut times = Vec::new();
        let mut rx = RxMeter::default();
        // Batched receive: every message there is (up to 64), copied out, one cursor store.
        let mut batch = Vec::with_capacity(64);
        let mut i = 0;
        let mut last = Instant::now();
        while i < n {
            batch.clear();
            match sub.try_recv_many(&mut batch, 64) {
                Ok(_) => last = Instant::now(),
                Err(RecvError::Empty) => {
                    spin_loop();
                    if last.elapsed() > PEER_TIMEOUT {
                        return Err("timed out waiting for the producer".into());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            for m in &batch {
                run.mark_window(i, &mut times);
                rx.start_at(i, run.warmup);
                if m.seq != i {
                    return Err(format!("expected message {i}, got {}", m.seq).into());
                }
                black_box(m.body.iter().fold(m.seq, |a, &b| a.wrapping_add(b)));
                i += 1;
            }
        }
        times.push(now_ns());
        rx.report(run.shared, run.index)?;
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        let mut publisher = topic.publisher::<Msg64>()?;
        ctl::announce_ready(run.shared);
        if batch > 1 {
            // Each batch written in place in its slots (`send_many_with`), as the floor writes
            // its ring and the one-at-a-time row its loans.
            let mut i = 0;
            while i < n {
                let end = (i + batch).min(n);
                publisher
                    .send_many_with((end - i) as usize, |k, m| {
                        let j = i + k as u64;
                        m.seq = j;
                        for (w, b) in m.body.iter_mut().enumerate() {
                            *b = j ^ w as u64;
                        }
                    })
                    .map_err(|e| e.to_string())?;
                i = end;
            }
            return Ok(None);
        }
        for i in 0..n {
            let mut loan = publisher.loan()?;
            loan.seq = i;
            for (k, w) in loan.body.iter_mut().enumerate() {
                *w = i ^ k as u64;
            }
            loan.publish().map_err(|e| e.to_string())?;
        }
        Ok(None)
    }
}

pub(crate) fn bulk(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let words = run.bytes / 8;
    let topic = Topic::builder(&format!("{}.bulk", run.tag))
        // Three queued plus one being read: the floor's four blocks.
        .capacity(3)
        .max_held(1)
        .overflow(Overflow::BackPressure)
        .publish_timeout(Some(PEER_TIMEOUT))
        .pool_blocks_per_segment(4)
        .pool_max_bytes((run.bytes as u64 + 4096) * 8);
    let n = run.total();
    if leader {
        let sub = topic.array_subscriber::<u64>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let mut times = Vec::new();
        let mut rx = RxMeter::default();
        for i in 0..n {
            run.mark_window(i, &mut times);
            rx.start_at(i, run.warmup);
            // Polled, as the other systems' consumers are.
            let start = Instant::now();
            let sample = loop {
                match sub.try_recv() {
                    Ok(s) => break s,
                    Err(RecvError::Empty) if start.elapsed() < PEER_TIMEOUT => spin_loop(),
                    Err(e) => return Err(e.into()),
                }
            };
            let data = sample.as_slice::<u64>()?;
            let sum = data.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            black_box(sum);
            if *sample.meta() != i || data.first() != Some(&i) {
                return Err(format!("bulk message {i} damaged").into());
            }
        }
        times.push(now_ns());
        rx.report(run.shared, run.index)?;
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        let mut publisher = topic.array_publisher::<u64>()?;
        ctl::announce_ready(run.shared);
        for i in 0..n {
            let mut loan = publisher.loan::<u64>(&[words])?;
            let (data, meta) = loan.parts_mut();
            for (k, w) in data.iter_mut().enumerate() {
                *w = i ^ k as u64;
            }
            *meta = i;
            loan.publish().map_err(|e| e.to_string())?;
        }
        Ok(None)
    }
}

pub(crate) fn fanout(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    // The default of 8 subscribers, or as many as the scenario has.
    let topic = Topic::builder(&format!("{}.fan", run.tag))
        .capacity(16)
        .max_subscribers(run.peers.max(8) as u32);
    if leader {
        let mut publisher = topic.publisher::<u64>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut lat = Vec::with_capacity(run.iters as usize);
        for i in 1..=run.total() {
            let t0 = now_ns();
            let mut loan = publisher.loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
            let last = collect_acks(run, i)?;
            if i > run.warmup {
                lat.push(last.saturating_sub(t0));
            }
        }
        // Subscribers leave before the topic goes; give them the time to read the last one.
        std::thread::sleep(Duration::from_millis(1));
        Ok(Some(Measured::Latencies(lat)))
    } else {
        ctl::wait_leader(run.shared)?;
        let sub = topic.subscriber::<u64>()?;
        ctl::announce_ready(run.shared);
        let mut rx = RxMeter::default();
        for i in 1..=run.total() {
            rx.start_at(i, run.warmup + 1);
            let got = *poll(&sub, yield_now)?;
            let t = now_ns();
            if got != i {
                return Err(format!("expected {i}, got {got}").into());
            }
            ack(run, i, t);
        }
        rx.report(run.shared, run.index)?;
        Ok(None)
    }
}

/// A work queue of 64-byte items, `put` and `get` (one lock hold each; at most once, the
/// default): one producer (the leader), `run.peers` consumers.
pub(crate) fn queue64(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let name = format!("{}.queue", run.tag);
    if leader {
        let q = QueueBuilder::new(&name)
            .capacity(QUEUE_SLOTS as u32)
            .open::<[u64; 8]>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut times = Vec::new();
        for i in 0..run.total() {
            run.mark_window(i, &mut times);
            q.put_timeout(item64(i), PEER_TIMEOUT)
                .map_err(|e| e.to_string())?;
        }
        q.close()?;
        let end = end_queue_run(run, times)?;
        let done = q.stats().done;
        if done != run.total() {
            return Err(format!("the queue counted {done} of {} items done", run.total()).into());
        }
        Ok(end)
    } else {
        ctl::wait_leader(run.shared)?;
        let q = QueueBuilder::new(&name).existing().open::<[u64; 8]>()?;
        ctl::announce_ready(run.shared);
        let (mut count, mut last) = (0u64, None);
        loop {
            match q.get_timeout(PEER_TIMEOUT) {
                Ok(item) => last = Some(check_item64(&item, last)?),
                Err(GetError::Closed) => break,
                Err(e) => return Err(e.into()),
            }
            count += 1;
        }
        ctl::finish_consumer(run.shared, count);
        Ok(None)
    }
}

/// A work queue of `run.bytes` arrays of `u64` with the item number as metadata
/// ([`shmbus::ArrayQueue`], acknowledged): the producer loans a slot and writes every byte in
/// place, then commits; a consumer receives it, reads every byte in place, then acknowledges
/// (two lock holds on each side).
pub(crate) fn queue_arrays(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let name = format!("{}.arrays", run.tag);
    let words = run.bytes / 8;
    if leader {
        let q = QueueBuilder::new(&name)
            .capacity(QUEUE_BLOCKS as u32)
            .array_bytes(run.bytes)
            .acknowledged(3)
            .open_arrays::<u64>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut times = Vec::new();
        for i in 0..run.total() {
            run.mark_window(i, &mut times);
            let mut loan = q
                .loan_timeout::<u64>(&[words], PEER_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let (data, meta) = loan.parts_mut();
            fill(data, i);
            *meta = i;
            loan.commit().map_err(|e| e.to_string())?;
        }
        q.close()?;
        let end = end_queue_run(run, times)?;
        let done = q.stats().done;
        if done != run.total() {
            return Err(format!("the queue counted {done} of {} items done", run.total()).into());
        }
        Ok(end)
    } else {
        ctl::wait_leader(run.shared)?;
        let q = QueueBuilder::new(&name).existing().open_arrays::<u64>()?;
        ctl::announce_ready(run.shared);
        let (mut count, mut last) = (0u64, None::<u64>);
        loop {
            let d = match q.receive_timeout(PEER_TIMEOUT) {
                Ok(d) => d,
                Err(GetError::Closed) => break,
                Err(e) => return Err(e.into()),
            };
            let i = *d.meta();
            if last.is_some_and(|l| l >= i) {
                return Err(format!("array {i} out of order (after {last:?})").into());
            }
            consume(d.as_slice::<u64>()?, i)?;
            d.ack()?;
            last = Some(i);
            count += 1;
        }
        ctl::finish_consumer(run.shared, count);
        Ok(None)
    }
}

/// The topics of the scenarios that wait on many topics.
fn many_topics(run: &Run<'_>, n: usize) -> Vec<Topic> {
    (0..n)
        .map(|j| Topic::builder(&format!("{}.many{j}", run.tag)).capacity(16))
        .collect()
}

/// As [`many_topics`], with rings deep enough that a receiver stalled for a few milliseconds
/// (this host pauses a vCPU now and then) does not fall a whole ring behind while messages
/// keep coming every [`ctl::WAITSET_GAP`].
fn deep_topics(run: &Run<'_>, n: usize) -> Vec<Topic> {
    (0..n)
        .map(|j| Topic::builder(&format!("{}.many{j}", run.tag)).capacity(1024))
        .collect()
}

/// The leader's side of a wake-up scenario on `topics` topics: a publisher on each, a message
/// on one of them at a time (rotating).
fn wake_publish(run: &Run<'_>, topics: usize) -> Res<Measured> {
    let mut pubs = many_topics(run, topics)
        .iter()
        .map(|t| t.publisher::<Stamp>())
        .collect::<Result<Vec<_>, _>>()?;
    ctl::leader_ready(run.shared);
    ctl::wait_ready(run.shared, 1)?;
    wake_leader(run, topics, |seq, j, sent_ns| {
        let mut loan = pubs[j].loan()?;
        *loan = Stamp { seq, sent_ns };
        loan.publish().map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Checks that message `i` arrived as expected and acknowledges it with its latency.
fn ack_stamp(run: &Run<'_>, i: u64, got: Stamp, topic: usize, topics: usize) -> Res<()> {
    ack_wake(run, i, got.sent_ns);
    if got.seq != i || topic != i as usize % topics {
        return Err(format!("expected message {i}, got {} on topic {topic}", got.seq).into());
    }
    Ok(())
}

/// Wake-up latency through a [`WaitSet`] holding the subscribers of `topics` topics; the
/// receiver takes what the ready keys point at, as a user's loop does.
pub(crate) fn wake_waitset(
    run: &mut Run<'_>,
    leader: bool,
    topics: usize,
) -> Res<Option<Measured>> {
    if leader {
        return Ok(Some(wake_publish(run, topics)?));
    }
    ctl::wait_leader(run.shared)?;
    let subs = many_topics(run, topics)
        .iter()
        .map(|t| t.subscriber::<Stamp>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut set = WaitSet::new()?;
    let keys = subs
        .iter()
        .map(|s| set.attach(s))
        .collect::<Result<Vec<_>, _>>()?;
    ctl::announce_ready(run.shared);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        rx.start_at(i, run.warmup + 1);
        let deadline = Instant::now() + PEER_TIMEOUT;
        'wait: loop {
            let ready = set.wait_timeout(Duration::from_millis(100))?;
            for (key, _) in &ready {
                let j = keys.iter().position(|&k| k == key).ok_or("unknown key")?;
                match subs[j].try_recv() {
                    Ok(m) => {
                        ack_stamp(run, i, *m, j, topics)?;
                        break 'wait;
                    }
                    Err(RecvError::Empty) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for a peer process".into());
            }
        }
    }
    rx.report(run.shared, run.index)?;
    Ok(None)
}

/// Wake-up latency of one subscriber blocked in `recv` (the baseline of the WaitSet rows).
pub(crate) fn wake_recv(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    if leader {
        return Ok(Some(wake_publish(run, 1)?));
    }
    ctl::wait_leader(run.shared)?;
    let sub = many_topics(run, 1)[0].subscriber::<Stamp>()?;
    ctl::announce_ready(run.shared);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        rx.start_at(i, run.warmup + 1);
        let m = *sub.recv_timeout(PEER_TIMEOUT)?;
        ack_stamp(run, i, m, 0, 1)?;
    }
    rx.report(run.shared, run.index)?;
    Ok(None)
}

/// The leader's side of an idle scenario: a publisher on each topic (so that the subscribers
/// are not told their publishers left), then nothing until the waiter reports.
fn idle_publishers(run: &Run<'_>, topics: usize) -> Res<Measured> {
    let _pubs: Vec<Publisher<Stamp>> = many_topics(run, topics)
        .iter()
        .map(|t| t.publisher::<Stamp>())
        .collect::<Result<_, _>>()?;
    ctl::leader_ready(run.shared);
    ctl::wait_ready(run.shared, 1)?;
    Ok(Measured::Values(vec![ctl::collect_idle(run.shared)?]))
}

/// CPU time of a [`WaitSet`] waiting on `topics` idle subscribers for `run.iters` ms.
pub(crate) fn idle_waitset(
    run: &mut Run<'_>,
    leader: bool,
    topics: usize,
) -> Res<Option<Measured>> {
    if leader {
        return Ok(Some(idle_publishers(run, topics)?));
    }
    ctl::wait_leader(run.shared)?;
    let subs = many_topics(run, topics)
        .iter()
        .map(|t| t.subscriber::<Stamp>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut set = WaitSet::new()?;
    for s in &subs {
        set.attach(s)?;
    }
    ctl::announce_ready(run.shared);
    let wall = Duration::from_millis(run.iters);
    let (cpu0, t0) = (ctl::process_cpu_ns(), Instant::now());
    while t0.elapsed() < wall {
        if !set
            .wait_timeout(wall.saturating_sub(t0.elapsed()))?
            .is_empty()
        {
            return Err("an idle topic was ready".into());
        }
    }
    let (cpu, elapsed) = (ctl::process_cpu_ns() - cpu0, t0.elapsed());
    ctl::report_idle(run.shared, cpu, elapsed.as_nanos() as u64);
    Ok(None)
}

/// CPU time of `topics` threads, each blocked in `recv` on its own idle subscriber, for
/// `run.iters` ms (the way to wait on many topics without a [`WaitSet`]).
pub(crate) fn idle_threads(
    run: &mut Run<'_>,
    leader: bool,
    topics: usize,
) -> Res<Option<Measured>> {
    if leader {
        return Ok(Some(idle_publishers(run, topics)?));
    }
    ctl::wait_leader(run.shared)?;
    let topics = many_topics(run, topics);
    let wall = Duration::from_millis(run.iters);
    // Each thread opens its subscriber; all are open before the clock starts, and each then
    // waits `wall` from there.
    let start = std::sync::Barrier::new(topics.len() + 1);
    let (cpu, elapsed) = std::thread::scope(|scope| -> Res<(u64, Duration)> {
        let threads: Vec<_> = topics
            .iter()
            .map(|topic| {
                let start = &start;
                scope.spawn(move || -> Result<(), String> {
                    let sub = topic.subscriber::<Stamp>();
                    start.wait();
                    let sub = sub.map_err(|e| e.to_string())?;
                    let t0 = Instant::now();
                    while t0.elapsed() < wall {
                        match sub.recv_timeout(wall.saturating_sub(t0.elapsed())) {
                            Err(RecvError::Timeout) => {}
                            Ok(_) => return Err("an idle topic had a message".into()),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        ctl::announce_ready(run.shared);
        let (cpu0, t0) = (ctl::process_cpu_ns(), Instant::now());
        for t in threads {
            t.join().map_err(|_| "a waiting thread panicked")??;
        }
        Ok((ctl::process_cpu_ns() - cpu0, t0.elapsed()))
    })?;
    ctl::report_idle(run.shared, cpu, elapsed.as_nanos() as u64);
    Ok(None)
}

/// The cost of one publish on the first of 16 topics whose subscribers are in another
/// process: with that process asleep in a [`WaitSet`] on all 16 (`sleeper`: the publish finds
/// a sleeper and wakes it), or polling the one topic (nobody sleeps: no system call). Each
/// send is timed alone, after [`ctl::WAITSET_GAP`] (the sleeper is back asleep).
pub(crate) fn publish_cost(
    run: &mut Run<'_>,
    leader: bool,
    sleeper: bool,
) -> Res<Option<Measured>> {
    const TOPICS: usize = 16;
    if leader {
        let mut pubs = deep_topics(run, TOPICS)
            .iter()
            .map(|t| t.publisher::<u64>())
            .collect::<Result<Vec<_>, _>>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let mut cost = Vec::with_capacity(run.iters as usize);
        for i in 1..=run.total() {
            ctl::busy_wait(ctl::WAITSET_GAP);
            let t = Instant::now();
            let mut loan = pubs[0].loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
            let ns = t.elapsed().as_nanos() as u64;
            if i > run.warmup {
                cost.push(ns);
            }
        }
        // The receiver has read the last message before the topics go.
        let lags = collect_acks(run, run.total())?;
        if lags > 0 {
            eprintln!(
                "  note: {}: the receiver fell a whole ring behind {lags} times",
                if sleeper {
                    "shmbus"
                } else {
                    "shmbus-no-waiter"
                }
            );
        }
        return Ok(Some(Measured::Latencies(cost)));
    }
    ctl::wait_leader(run.shared)?;
    let subs = deep_topics(run, TOPICS)
        .iter()
        .map(|t| t.subscriber::<u64>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut set = WaitSet::new()?;
    if sleeper {
        for s in &subs {
            set.attach(s)?;
        }
    }
    ctl::announce_ready(run.shared);
    // The receiver takes every message it can; if it falls a whole ring behind (it was not
    // running for a thousand messages), it counts that and goes on from the oldest one left:
    // what is measured is the publisher.
    let (mut next, mut lags) = (1, 0);
    let deadline = Instant::now() + PEER_TIMEOUT;
    while next <= run.total() {
        if sleeper {
            set.wait_timeout(Duration::from_millis(100))?;
        } else {
            spin_loop();
        }
        loop {
            match subs[0].try_recv() {
                Ok(m) if *m >= next => next = *m + 1,
                Ok(m) => return Err(format!("expected {next} or later, got {}", *m).into()),
                Err(RecvError::Empty) => break,
                Err(RecvError::Lagged(_)) => lags += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for a peer process".into());
        }
    }
    ack(run, run.total(), lags);
    Ok(None)
}

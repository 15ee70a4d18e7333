//! shmbus, written as a user writes it: typed topics, loan/write/publish, receive in place.

use std::hint::{black_box, spin_loop};
use std::time::{Duration, Instant};

use shmbus::{GetError, Overflow, QueueBuilder, RecvError, Subscriber, Topic};

use crate::ctl::{self, now_ns, PEER_TIMEOUT};
use crate::floor::{
    ack, check_item64, collect_acks, consume, end_queue_run, fill, item64, yield_now, QUEUE_BLOCKS,
    QUEUE_SLOTS,
};
use crate::{Measured, Res, Run};

/// A 64-byte message.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    body: [u64; 7],
}

/// Polls `sub` until a message arrives, calling `idle` between polls.
fn poll<'a, T: bytemuck::Pod>(
    sub: &'a Subscriber<T>,
    mut idle: impl FnMut(),
) -> Res<shmbus::Sample<'a, T>> {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        match sub.try_recv() {
            Ok(s) => return Ok(s),
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

pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool, blocking: bool) -> Res<Option<Measured>> {
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
        let got = if blocking {
            *subscriber.recv_timeout(PEER_TIMEOUT)?
        } else {
            *poll(&subscriber, spin_loop)?
        };
        if got != want {
            return Err(format!("expected {want}, got {got}").into());
        }
        Ok(())
    };
    let mut rt = Vec::with_capacity(run.iters as usize);
    for i in 1..=run.total() {
        if leader {
            if blocking {
                ctl::settle();
            }
            let t = Instant::now();
            let mut loan = publisher.loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
            recv(i)?;
            if i > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            recv(i)?;
            let mut loan = publisher.loan()?;
            *loan = i;
            loan.publish().map_err(|e| e.to_string())?;
        }
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

pub(crate) fn stream64(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
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
        for i in 0..n {
            run.mark_window(i, &mut times);
            let m = poll(&sub, spin_loop)?;
            if m.seq != i {
                return Err(format!("expected message {i}, got {}", m.seq).into());
            }
            black_box(m.body.iter().fold(m.seq, |a, &b| a.wrapping_add(b)));
        }
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        let mut publisher = topic.publisher::<Msg64>()?;
        ctl::announce_ready(run.shared);
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
        for i in 0..n {
            run.mark_window(i, &mut times);
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
    let topic = Topic::builder(&format!("{}.fan", run.tag)).capacity(16);
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
        for i in 1..=run.total() {
            let got = *poll(&sub, yield_now)?;
            let t = now_ns();
            if got != i {
                return Err(format!("expected {i}, got {got}").into());
            }
            ack(run, i, t);
        }
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

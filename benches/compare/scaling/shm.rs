//! shmbus in the scaling scenarios: one publisher to N subscribers, messages of any size in
//! the slot, several publishers on one topic.

use std::hint::{black_box, spin_loop};
use std::time::{Duration, Instant};

use shmbus::{Overflow, Topic};

use super::{check_tagged, msg_slots, share, tagged, STREAM_SLOTS};
use crate::ctl::{self, now_ns, PEER_TIMEOUT};
use crate::floor::{ack, collect_acks, consume, fill, yield_now};
use crate::shm::poll;
use crate::{Measured, Res, Run};

/// A message of `W` 64-bit words, in the slot.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Words<const W: usize>([u64; W]);

// SAFETY: a transparent wrapper of `[u64; W]`: no padding, and every bit pattern is valid.
unsafe impl<const W: usize> bytemuck::Zeroable for Words<W> {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl<const W: usize> bytemuck::Pod for Words<W> {}

/// A 64-byte message of the fan-out stream.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    body: [u64; 7],
}

/// Fan-out throughput: one publisher (the leader), back-pressure (nothing lost), `run.peers`
/// subscribers that share a CPU and yield between empty polls.
pub(crate) fn fanout_stream(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let topic = Topic::builder(&format!("{}.fanstream", run.tag))
        .capacity(STREAM_SLOTS as u32)
        .max_subscribers(run.peers.max(8) as u32)
        .overflow(Overflow::BackPressure)
        .publish_timeout(Some(PEER_TIMEOUT));
    let n = run.total();
    if leader {
        let mut publisher = topic.publisher::<Msg64>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            let mut loan = publisher.loan()?;
            loan.seq = i;
            for (k, w) in loan.body.iter_mut().enumerate() {
                *w = i ^ k as u64;
            }
            loan.publish().map_err(|e| e.to_string())?;
        }
        collect_acks(run, n)?;
        times.push(now_ns());
        // Subscribers leave before the topic goes.
        std::thread::sleep(Duration::from_millis(1));
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        let sub = topic.subscriber::<Msg64>()?;
        ctl::announce_ready(run.shared);
        for i in 0..n {
            let m = poll(&sub, yield_now)?;
            if m.seq != i {
                return Err(format!("expected message {i}, got {}", m.seq).into());
            }
            black_box(m.body.iter().fold(m.seq, |a, &b| a.wrapping_add(b)));
        }
        ack(run, n, 0);
        Ok(None)
    }
}

/// Busy ping-pong of `run.bytes`-byte messages (a `Publisher<[u64; W]>` each way): the
/// sender writes every word of the loaned slot, the receiver reads every word in place.
pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    match run.bytes {
        8 => pingpong_of::<1>(run, leader),
        64 => pingpong_of::<8>(run, leader),
        512 => pingpong_of::<64>(run, leader),
        4096 => pingpong_of::<512>(run, leader),
        65536 => pingpong_of::<8192>(run, leader),
        b => Err(format!("no message type of {b} bytes").into()),
    }
}

fn pingpong_of<const W: usize>(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let ping = Topic::builder(&format!("{}.ping", run.tag)).capacity(16);
    let pong = Topic::builder(&format!("{}.pong", run.tag)).capacity(16);
    let (out, inp) = if leader { (ping, pong) } else { (pong, ping) };
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let mut publisher = out.publisher::<Words<W>>()?;
    let subscriber = inp.subscriber::<Words<W>>()?;
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
    } else {
        ctl::announce_ready(run.shared);
    }
    let recv = |i: u64| -> Res<()> { consume(&poll(&subscriber, spin_loop)?.0, i) };
    let mut send = |i: u64| -> Res<()> {
        let mut loan = publisher.loan()?;
        fill(&mut loan.0, i);
        loan.publish().map_err(|e| e.to_string())?;
        Ok(())
    };
    let mut rt = Vec::with_capacity(run.iters as usize);
    for i in 1..=run.total() {
        if leader {
            let t = Instant::now();
            send(i)?;
            recv(i)?;
            if i > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            recv(i)?;
            send(i)?;
        }
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// A stream of `run.bytes`-byte messages, back-pressure, a ring of [`msg_slots`]: the
/// producer (the peer) writes every word of each loaned slot, the consumer (the leader) reads
/// every word in place.
pub(crate) fn stream(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    match run.bytes {
        8 => stream_of::<1>(run, leader),
        64 => stream_of::<8>(run, leader),
        512 => stream_of::<64>(run, leader),
        4096 => stream_of::<512>(run, leader),
        65536 => stream_of::<8192>(run, leader),
        b => Err(format!("no message type of {b} bytes").into()),
    }
}

fn stream_of<const W: usize>(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let topic = Topic::builder(&format!("{}.sized", run.tag))
        .capacity(msg_slots(run.bytes) as u32)
        .overflow(Overflow::BackPressure)
        .publish_timeout(Some(PEER_TIMEOUT));
    let n = run.total();
    if leader {
        let sub = topic.subscriber::<Words<W>>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            consume(&poll(&sub, spin_loop)?.0, i)?;
        }
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        let mut publisher = topic.publisher::<Words<W>>()?;
        ctl::announce_ready(run.shared);
        for i in 0..n {
            let mut loan = publisher.loan()?;
            fill(&mut loan.0, i);
            loan.publish().map_err(|e| e.to_string())?;
        }
        Ok(None)
    }
}

/// Several publisher processes on one topic (`max_publishers` = their number: one publishes
/// without a lock, more take the topic's robust publish mutex), back-pressure, one subscriber
/// (the leader) checking every publisher's messages arrive in order, none lost.
pub(crate) fn publishers(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let topic = Topic::builder(&format!("{}.multi", run.tag))
        .capacity(STREAM_SLOTS as u32)
        .max_publishers(run.peers as u32)
        .overflow(Overflow::BackPressure)
        .publish_timeout(Some(PEER_TIMEOUT));
    let n = run.total();
    if leader {
        let sub = topic.subscriber::<[u64; 8]>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut next = vec![0u64; run.peers + 1];
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            check_tagged(&*poll(&sub, spin_loop)?, &mut next)?;
        }
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        ctl::wait_leader(run.shared)?;
        let mut publisher = topic.publisher::<[u64; 8]>()?;
        ctl::announce_ready(run.shared);
        let me = run.index as u64;
        for j in 0..share(n, run.peers, run.index) {
            let mut loan = publisher.loan()?;
            *loan = tagged(me, j);
            loan.publish().map_err(|e| e.to_string())?;
        }
        Ok(None)
    }
}

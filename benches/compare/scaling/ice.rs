//! iceoryx2 0.10 in the scaling scenarios, written as its examples write it: loan, write,
//! send; receive. Messages of any size are slices of `u64` (`loan_slice_uninit`, written in
//! place with `write_from_fn`); `RetryUntilDelivered` where nothing may be lost.

use std::hint::{black_box, spin_loop};
use std::time::Instant;

use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;

use super::{check_tagged, msg_slots, share, tagged, STREAM_SLOTS};
use crate::ctl::{self, now_ns};
use crate::floor::{ack, collect_acks, consume, yield_now};
use crate::ice::{
    connect, done_reading, err, node, poll, service_name, wait_connected, wait_until_read,
};
use crate::{Measured, Res, Run};

/// A 64-byte message of the fan-out stream.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    body: [u64; 7],
}

/// Fan-out throughput: one publisher (the leader), `run.peers` subscribers sharing a CPU and
/// yielding between empty polls, no sample lost (`RetryUntilDelivered`, no safe overflow).
pub(crate) fn fanout_stream(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "fanstream")?)
        .publish_subscribe::<Msg64>()
        .max_subscribers(run.peers + 1)
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(STREAM_SLOTS)
        .open_or_create()
        .map_err(err("service"))?;
    let n = run.total();
    if leader {
        let publisher = svc
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(err("publisher"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        // Every subscriber exists: connect to all of them before the first sample.
        publisher.update_connections().map_err(err("connect"))?;
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            let mut body = [0u64; 7];
            for (k, w) in body.iter_mut().enumerate() {
                *w = i ^ k as u64;
            }
            let sample = publisher.loan_uninit().map_err(err("loan"))?;
            sample
                .write_payload(Msg64 { seq: i, body })
                .send()
                .map_err(err("send"))?;
        }
        collect_acks(run, n)?;
        times.push(now_ns());
        Ok(Some(Measured::Windows(times)))
    } else {
        let sub = svc
            .subscriber_builder()
            .buffer_size(STREAM_SLOTS)
            .create()
            .map_err(err("subscriber"))?;
        ctl::announce_ready(run.shared);
        for i in 0..n {
            let s = poll(&sub, yield_now)?;
            let m = s.payload();
            if m.seq != i {
                return Err(format!("expected message {i}, got {}", m.seq).into());
            }
            black_box(m.body.iter().fold(m.seq, |a, &b| a.wrapping_add(b)));
        }
        ack(run, n, 0);
        Ok(None)
    }
}

/// Polls a slice subscriber until a sample arrives.
fn poll_slice(
    sub: &iceoryx2::port::subscriber::Subscriber<ipc::Service, [u64], ()>,
) -> Res<iceoryx2::sample::Sample<ipc::Service, [u64], ()>> {
    let deadline = Instant::now() + ctl::PEER_TIMEOUT;
    loop {
        if let Some(s) = sub.receive().map_err(err("receive"))? {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for a peer process".into());
        }
        spin_loop();
    }
}

/// Busy ping-pong of `run.bytes`-byte messages: a slice service each way; the sender writes
/// every word of the loaned sample, the receiver reads every word in place.
pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let words = run.bytes / 8;
    let node = node()?;
    let (out, inp) = if leader {
        ("ping", "pong")
    } else {
        ("pong", "ping")
    };
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let open = |what: &str| -> Res<_> {
        node.service_builder(&service_name(run, what)?)
            .publish_subscribe::<[u64]>()
            .open_or_create()
            .map_err(err("service"))
    };
    let out_svc = open(out)?;
    let in_svc = open(inp)?;
    let publisher = out_svc
        .publisher_builder()
        .initial_max_slice_len(words)
        .create()
        .map_err(err("publisher"))?;
    let subscriber = in_svc
        .subscriber_builder()
        .create()
        .map_err(err("subscriber"))?;
    if leader {
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
    } else {
        ctl::announce_ready(run.shared);
    }
    let send = |i: u64| -> Res<()> {
        let sample = publisher.loan_slice_uninit(words).map_err(err("loan"))?;
        sample
            .write_from_fn(|k| i ^ k as u64)
            .send()
            .map_err(err("send"))?;
        Ok(())
    };
    let recv = |i: u64| -> Res<()> { consume(poll_slice(&subscriber)?.payload(), i) };
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
    // The peer's last sample must be read before its publisher goes.
    if leader {
        done_reading(run);
    } else {
        wait_until_read(run)?;
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// A stream of `run.bytes`-byte messages (a slice service, a buffer of [`msg_slots`]), no
/// sample lost: the producer (the peer) writes every word in place, the consumer (the
/// leader) reads every word in place.
pub(crate) fn stream(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let (words, slots) = (run.bytes / 8, msg_slots(run.bytes));
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "sized")?)
        .publish_subscribe::<[u64]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(slots)
        .open_or_create()
        .map_err(err("service"))?;
    let n = run.total();
    if leader {
        let sub = svc
            .subscriber_builder()
            .buffer_size(slots)
            .create()
            .map_err(err("subscriber"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        connect(run, &sub)?;
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            consume(poll_slice(&sub)?.payload(), i)?;
        }
        times.push(now_ns());
        done_reading(run);
        Ok(Some(Measured::Windows(times)))
    } else {
        let publisher = svc
            .publisher_builder()
            .initial_max_slice_len(words)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(err("publisher"))?;
        ctl::announce_ready(run.shared);
        wait_connected(run)?;
        for i in 0..n {
            let sample = publisher.loan_slice_uninit(words).map_err(err("loan"))?;
            sample
                .write_from_fn(|k| i ^ k as u64)
                .send()
                .map_err(err("send"))?;
        }
        wait_until_read(run)?;
        Ok(None)
    }
}

/// Several publisher processes on one service (`max_publishers` = their number), one
/// subscriber (the leader) checking every publisher's messages arrive in order, none lost.
pub(crate) fn publishers(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "multi")?)
        .publish_subscribe::<[u64; 8]>()
        .max_publishers(run.peers)
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(STREAM_SLOTS)
        .open_or_create()
        .map_err(err("service"))?;
    let n = run.total();
    if leader {
        let sub = svc
            .subscriber_builder()
            .buffer_size(STREAM_SLOTS)
            .create()
            .map_err(err("subscriber"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        connect(run, &sub)?;
        let mut next = vec![0u64; run.peers + 1];
        let mut times = Vec::new();
        for i in 0..n {
            run.mark_window(i, &mut times);
            check_tagged(poll(&sub, spin_loop)?.payload(), &mut next)?;
        }
        times.push(now_ns());
        done_reading(run);
        Ok(Some(Measured::Windows(times)))
    } else {
        let publisher = svc
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(err("publisher"))?;
        ctl::announce_ready(run.shared);
        wait_connected(run)?;
        let me = run.index as u64;
        for j in 0..share(n, run.peers, run.index) {
            let sample = publisher.loan_uninit().map_err(err("loan"))?;
            sample
                .write_payload(tagged(me, j))
                .send()
                .map_err(err("send"))?;
        }
        wait_until_read(run)?;
        Ok(None)
    }
}

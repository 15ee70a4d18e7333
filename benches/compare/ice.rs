//! iceoryx2 0.10, written as its examples write it: loan, write, send; receive; for sleeping
//! receivers, a sample plus an event notification.

use std::hint::{black_box, spin_loop};
use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;

use crate::ctl::{self, now_ns, RxMeter, PEER_TIMEOUT};
use crate::floor::{
    ack, ack_wake, collect_acks, wake_leader, wake_receiver, wake_sender, yield_now,
};
use crate::{Measured, Res, Run};

/// A 64-byte message.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
struct Msg64 {
    seq: u64,
    body: [u64; 7],
}

/// A message of the scenarios that wait on many topics: its number and its send time.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
struct Stamp {
    seq: u64,
    sent_ns: u64,
}

pub(crate) fn node() -> Res<Node<ipc::Service>> {
    // No config file is expected: the defaults are what a user gets; say nothing about them.
    set_log_level(LogLevel::Error);
    Ok(NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| format!("iceoryx2 node: {e:?}"))?)
}

/// What iceoryx2 keeps on the machine beyond its nodes' lives: a global management segment in
/// `/dev/shm` and a directory in the temporary directory. The harness removes them at the end
/// if they were not there at the start (no other iceoryx2 user on the machine).
#[derive(Debug)]
pub(crate) struct Residue {
    shm_before: bool,
    tmp_before: bool,
}

const TMP_DIR: &str = "/tmp/iceoryx2";

fn iox2_files() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("iox2_"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

impl Residue {
    pub(crate) fn before() -> Residue {
        Residue {
            shm_before: !iox2_files().is_empty(),
            tmp_before: std::path::Path::new(TMP_DIR).exists(),
        }
    }

    pub(crate) fn remove(&self) {
        cleanup();
        if !self.shm_before {
            for f in iox2_files() {
                let _ = std::fs::remove_file(f);
            }
        }
        if !self.tmp_before {
            let _ = std::fs::remove_dir_all(TMP_DIR);
        }
    }
}

/// Removes what iceoryx2 nodes of dead processes left behind (peers killed by a failed run).
fn cleanup() {
    if let Ok(node) = node() {
        let _ = node.try_cleanup_dead_nodes();
    }
}

pub(crate) fn service_name(run: &Run<'_>, what: &str) -> Res<ServiceName> {
    ServiceName::new(&format!("{}/{what}", run.tag)).map_err(|e| format!("{e:?}").into())
}

pub(crate) fn err<E: std::fmt::Debug>(
    what: &'static str,
) -> impl Fn(E) -> Box<dyn std::error::Error + Send + Sync> {
    move |e| format!("iceoryx2 {what}: {e:?}").into()
}

/// Polls `sub` until a sample arrives.
pub(crate) fn poll<T: std::fmt::Debug + ZeroCopySend>(
    sub: &Subscriber<ipc::Service, T, ()>,
    mut idle: impl FnMut(),
) -> Res<Sample<ipc::Service, T, ()>> {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        if let Some(s) = sub.receive().map_err(err("receive"))? {
            return Ok(s);
        }
        idle();
        n = n.wrapping_add(1);
        if n % 1024 == 0 && start.elapsed() > PEER_TIMEOUT {
            return Err("timed out waiting for a peer process".into());
        }
    }
}

/// Sleeps on `listener` until a sample is there.
fn sleep_recv<T: std::fmt::Debug + ZeroCopySend>(
    sub: &Subscriber<ipc::Service, T, ()>,
    listener: &Listener<ipc::Service>,
) -> Res<Sample<ipc::Service, T, ()>> {
    let deadline = Instant::now() + PEER_TIMEOUT;
    loop {
        if let Some(s) = sub.receive().map_err(err("receive"))? {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for a peer process".into());
        }
        listener
            .timed_wait(|_| {}, Duration::from_millis(100))
            .map_err(err("wait"))?;
    }
}

pub(crate) fn pingpong(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
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
            .publish_subscribe::<u64>()
            .open_or_create()
            .map_err(err("service"))
    };
    let out_svc = open(out)?;
    let in_svc = open(inp)?;
    let publisher = out_svc
        .publisher_builder()
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
    let send = |v: u64| -> Res<()> {
        let sample = publisher.loan_uninit().map_err(err("loan"))?;
        sample.write_payload(v).send().map_err(err("send"))?;
        Ok(())
    };
    let recv = |want: u64| -> Res<()> {
        let s = poll(&subscriber, spin_loop)?;
        if *s.payload() != want {
            return Err(format!("expected {want}, got {}", s.payload()).into());
        }
        Ok(())
    };
    let mut rt = Vec::with_capacity(run.iters as usize);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        if leader {
            let t = Instant::now();
            send(i)?;
            recv(i)?;
            if i > run.warmup {
                rt.push(t.elapsed().as_nanos() as u64);
            }
        } else {
            rx.start_at(i, run.warmup + 1);
            recv(i)?;
            send(i)?;
        }
    }
    // The peer's last sample must be read before its publisher goes.
    if leader {
        done_reading(run);
    } else {
        rx.report(run.shared, run.index)?;
        wait_until_read(run)?;
    }
    Ok(leader.then_some(Measured::RoundTrips(rt)))
}

/// A hand-off to a sleeping receiver, as iceoryx2's examples write it: loan, write, send, then
/// `notify` on an event service; the receiver sleeps on its listener (`timed_wait`) until the
/// sample is there.
pub(crate) fn wake(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "wake")?)
        .publish_subscribe::<u64>()
        .open_or_create()
        .map_err(err("service"))?;
    let events = node
        .service_builder(&service_name(run, "wake.event")?)
        .event()
        .open_or_create()
        .map_err(err("event service"))?;
    if leader {
        let publisher = svc.publisher_builder().create().map_err(err("publisher"))?;
        let notifier = events
            .notifier_builder()
            .create()
            .map_err(err("notifier"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let m = wake_sender(run, |i| {
            let sample = publisher.loan_uninit().map_err(err("loan"))?;
            sample.write_payload(i).send().map_err(err("send"))?;
            notifier.notify().map_err(err("notify"))?;
            Ok(())
        })?;
        return Ok(Some(m));
    }
    let subscriber = svc
        .subscriber_builder()
        .create()
        .map_err(err("subscriber"))?;
    let listener = events
        .listener_builder()
        .create()
        .map_err(err("listener"))?;
    ctl::announce_ready(run.shared);
    wake_receiver(run, |i| {
        let s = sleep_recv(&subscriber, &listener)?;
        if *s.payload() != i {
            return Err(format!("expected {i}, got {}", s.payload()).into());
        }
        Ok(())
    })?;
    Ok(None)
}

pub(crate) fn stream64(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "stream")?)
        .publish_subscribe::<Msg64>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(256)
        .open_or_create()
        .map_err(err("service"))?;
    let n = run.total();
    if leader {
        let sub = svc
            .subscriber_builder()
            .buffer_size(256)
            .create()
            .map_err(err("subscriber"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        connect(run, &sub)?;
        let mut times = Vec::new();
        let mut rx = RxMeter::default();
        for i in 0..n {
            run.mark_window(i, &mut times);
            rx.start_at(i, run.warmup);
            let s = poll(&sub, spin_loop)?;
            let m = s.payload();
            if m.seq != i {
                return Err(format!("expected message {i}, got {}", m.seq).into());
            }
            black_box(m.body.iter().fold(m.seq, |a, &b| a.wrapping_add(b)));
        }
        times.push(now_ns());
        rx.report(run.shared, run.index)?;
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
        for i in 0..n {
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
        wait_until_read(run)?;
        Ok(None)
    }
}

/// The consumer attaches to the producer's publisher before the producer sends: a blocking
/// publisher drops what it sends to a subscriber that has not connected yet.
pub(crate) fn connect(run: &Run<'_>, sub: &impl UpdateConnections) -> Res<()> {
    sub.update_connections().map_err(err("connect"))?;
    ctl::signal(run.shared, ctl::line::CONNECTED);
    Ok(())
}

pub(crate) fn wait_connected(run: &Run<'_>) -> Res<()> {
    ctl::wait_signal(run.shared, ctl::line::CONNECTED)
}

/// A producer's last samples must be read before its publisher goes (iceoryx2 reclaims the
/// data segment with the publisher); the consumer tells it through the control mapping.
pub(crate) fn wait_until_read(run: &Run<'_>) -> Res<()> {
    ctl::wait_signal(run.shared, ctl::line::DONE)
}

pub(crate) fn done_reading(run: &Run<'_>) {
    ctl::signal(run.shared, ctl::line::DONE);
}

pub(crate) fn bulk(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let words = run.bytes / 8;
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "bulk")?)
        .publish_subscribe::<[u64]>()
        .enable_safe_overflow(false)
        // Three queued plus one being read: the floor's four blocks.
        .subscriber_max_buffer_size(3)
        .subscriber_max_borrowed_samples(1)
        .open_or_create()
        .map_err(err("service"))?;
    let n = run.total();
    if leader {
        let sub = svc
            .subscriber_builder()
            .buffer_size(3)
            .create()
            .map_err(err("subscriber"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        connect(run, &sub)?;
        let mut times = Vec::new();
        let mut rx = RxMeter::default();
        for i in 0..n {
            run.mark_window(i, &mut times);
            rx.start_at(i, run.warmup);
            let deadline = Instant::now() + PEER_TIMEOUT;
            let s = loop {
                if let Some(s) = sub.receive().map_err(err("receive"))? {
                    break s;
                }
                if Instant::now() > deadline {
                    return Err("timed out waiting for a peer process".into());
                }
                spin_loop();
            };
            let data = s.payload();
            black_box(data.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
            if data.first() != Some(&i) {
                return Err(format!("bulk message {i} damaged").into());
            }
        }
        times.push(now_ns());
        rx.report(run.shared, run.index)?;
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
            let sample = sample.write_from_fn(|k| i ^ k as u64);
            sample.send().map_err(err("send"))?;
        }
        wait_until_read(run)?;
        Ok(None)
    }
}

pub(crate) fn fanout(run: &mut Run<'_>, leader: bool) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let svc = node
        .service_builder(&service_name(run, "fan")?)
        .publish_subscribe::<u64>()
        .max_subscribers(run.peers + 1)
        .open_or_create()
        .map_err(err("service"))?;
    if leader {
        let publisher = svc.publisher_builder().create().map_err(err("publisher"))?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, run.peers as u64)?;
        let mut lat = Vec::with_capacity(run.iters as usize);
        for i in 1..=run.total() {
            let t0 = now_ns();
            let sample = publisher.loan_uninit().map_err(err("loan"))?;
            sample.write_payload(i).send().map_err(err("send"))?;
            let last = collect_acks(run, i)?;
            if i > run.warmup {
                lat.push(last.saturating_sub(t0));
            }
        }
        Ok(Some(Measured::Latencies(lat)))
    } else {
        let sub = svc
            .subscriber_builder()
            .create()
            .map_err(err("subscriber"))?;
        ctl::announce_ready(run.shared);
        let mut rx = RxMeter::default();
        for i in 1..=run.total() {
            rx.start_at(i, run.warmup + 1);
            let s = poll(&sub, yield_now)?;
            let t = now_ns();
            if *s.payload() != i {
                return Err(format!("expected {i}, got {}", s.payload()).into());
            }
            ack(run, i, t);
        }
        rx.report(run.shared, run.index)?;
        Ok(None)
    }
}

/// The event service of topic `j` of the scenarios that wait on many topics.
fn many_events(
    node: &Node<ipc::Service>,
    run: &Run<'_>,
    j: usize,
) -> Res<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>> {
    node.service_builder(&service_name(run, &format!("many{j}.event"))?)
        .event()
        .open_or_create()
        .map_err(err("event service"))
}

/// The publish-subscribe service of topic `j`.
fn many_topic(
    node: &Node<ipc::Service>,
    run: &Run<'_>,
    j: usize,
) -> Res<iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, Stamp, ()>> {
    node.service_builder(&service_name(run, &format!("many{j}"))?)
        .publish_subscribe::<Stamp>()
        .open_or_create()
        .map_err(err("service"))
}

/// Wake-up latency through iceoryx2's WaitSet holding the listeners of `topics` topics (a
/// publish-subscribe service and an event service each, as its examples pair them: send,
/// then notify); the receiver, told which listener fired, drains its notifications and takes
/// the sample.
pub(crate) fn wake_waitset(
    run: &mut Run<'_>,
    leader: bool,
    topics: usize,
) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let services = (0..topics)
        .map(|j| many_topic(&node, run, j))
        .collect::<Res<Vec<_>>>()?;
    let events = (0..topics)
        .map(|j| many_events(&node, run, j))
        .collect::<Res<Vec<_>>>()?;
    if leader {
        let pubs = services
            .iter()
            .map(|s| s.publisher_builder().create().map_err(err("publisher")))
            .collect::<Res<Vec<_>>>()?;
        let notifiers = events
            .iter()
            .map(|e| e.notifier_builder().create().map_err(err("notifier")))
            .collect::<Res<Vec<_>>>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        let m = wake_leader(run, topics, |seq, j, sent_ns| {
            let sample = pubs[j].loan_uninit().map_err(err("loan"))?;
            sample
                .write_payload(Stamp { seq, sent_ns })
                .send()
                .map_err(err("send"))?;
            notifiers[j].notify().map_err(err("notify"))?;
            Ok(())
        })?;
        return Ok(Some(m));
    }
    let subs = services
        .iter()
        .map(|s| s.subscriber_builder().create().map_err(err("subscriber")))
        .collect::<Res<Vec<_>>>()?;
    let listeners = events
        .iter()
        .map(|e| e.listener_builder().create().map_err(err("listener")))
        .collect::<Res<Vec<_>>>()?;
    let waitset = WaitSetBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(err("waitset"))?;
    let guards = listeners
        .iter()
        .map(|l| waitset.attach_notification(l).map_err(err("attach")))
        .collect::<Res<Vec<_>>>()?;
    ctl::announce_ready(run.shared);
    let mut rx = RxMeter::default();
    for i in 1..=run.total() {
        rx.start_at(i, run.warmup + 1);
        let deadline = Instant::now() + PEER_TIMEOUT;
        let mut got: Option<Res<(Stamp, usize)>> = None;
        while got.is_none() {
            waitset
                .wait_and_process_once_with_timeout(
                    |id| {
                        let Some(j) = guards.iter().position(|g| id.has_event_from(g)) else {
                            return CallbackProgression::Continue;
                        };
                        let step = || -> Res<Option<(Stamp, usize)>> {
                            listeners[j].try_wait(|_| {}).map_err(err("try_wait"))?;
                            Ok(subs[j]
                                .receive()
                                .map_err(err("receive"))?
                                .map(|s| (*s.payload(), j)))
                        };
                        match step() {
                            Ok(None) => CallbackProgression::Continue,
                            Ok(Some(m)) => {
                                got = Some(Ok(m));
                                CallbackProgression::Stop
                            }
                            Err(e) => {
                                got = Some(Err(e));
                                CallbackProgression::Stop
                            }
                        }
                    },
                    Duration::from_millis(100),
                )
                .map_err(err("wait"))?;
            if got.is_none() && Instant::now() > deadline {
                return Err("timed out waiting for a peer process".into());
            }
        }
        let (m, j) = got.ok_or("nothing received")??;
        ack_wake(run, i, m.sent_ns);
        if m.seq != i || j != i as usize % topics {
            return Err(format!("expected message {i}, got {} on topic {j}", m.seq).into());
        }
    }
    rx.report(run.shared, run.index)?;
    Ok(None)
}

/// CPU time of iceoryx2's WaitSet waiting on the listeners of `topics` idle event services for
/// `run.iters` ms (the leader holds a notifier on each; no publish-subscribe services: they take
/// no part in waiting).
pub(crate) fn idle_waitset(
    run: &mut Run<'_>,
    leader: bool,
    topics: usize,
) -> Res<Option<Measured>> {
    let node = node()?;
    if !leader {
        ctl::wait_leader(run.shared)?;
    }
    let events = (0..topics)
        .map(|j| many_events(&node, run, j))
        .collect::<Res<Vec<_>>>()?;
    if leader {
        let _notifiers = events
            .iter()
            .map(|e| e.notifier_builder().create().map_err(err("notifier")))
            .collect::<Res<Vec<_>>>()?;
        ctl::leader_ready(run.shared);
        ctl::wait_ready(run.shared, 1)?;
        return Ok(Some(Measured::Values(vec![ctl::collect_idle(run.shared)?])));
    }
    let listeners = events
        .iter()
        .map(|e| e.listener_builder().create().map_err(err("listener")))
        .collect::<Res<Vec<_>>>()?;
    let waitset = WaitSetBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(err("waitset"))?;
    let _guards = listeners
        .iter()
        .map(|l| waitset.attach_notification(l).map_err(err("attach")))
        .collect::<Res<Vec<_>>>()?;
    ctl::announce_ready(run.shared);
    let wall = Duration::from_millis(run.iters);
    let (cpu0, t0) = (ctl::process_cpu_ns(), Instant::now());
    let mut fired = false;
    while t0.elapsed() < wall {
        waitset
            .wait_and_process_once_with_timeout(
                |_| {
                    fired = true;
                    CallbackProgression::Continue
                },
                wall.saturating_sub(t0.elapsed()),
            )
            .map_err(err("wait"))?;
    }
    let (cpu, elapsed) = (ctl::process_cpu_ns() - cpu0, t0.elapsed());
    if fired {
        return Err("an idle listener fired".into());
    }
    ctl::report_idle(run.shared, cpu, elapsed.as_nanos() as u64);
    Ok(None)
}

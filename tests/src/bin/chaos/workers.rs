//! The Rust worker processes of the chaos harness: one role per subcommand of `chaos worker`.
//!
//! Every worker reports on stdout in the line protocol of the multi-process tests (a tag, then
//! `key=value` fields; see `shmbus_tests::Line`):
//!
//! - `ready` once it has joined;
//! - `prog ...` at least every 100 ms while it works (also its heartbeat);
//! - `viol kind=<lost|dup|corrupt> n=<k> what=<...>` as soon as a check fails;
//! - `hole n=<k>`, `joinlag n=<k>`, `baddesc n=<k>`: skips the policy may allow (the conductor
//!   decides, from the kills it made);
//! - `hang op=<op> bound_ms= elapsed_ms= start_ns= end_ns=`: a bounded wait that overran its
//!   bound by more than [`SLACK`] (the conductor excuses those it paused itself);
//! - `got p=<producer> i=<index> d=<deliveries> ok=<intact>` for every queue item, *before* it is
//!   acknowledged;
//! - `recovered dead=<tag> gap=<a - b>` for every robust-lock takeover;
//! - `final ...` when it ends by being told to (`quit` or the end of its standard input; for
//!   queue consumers, the queue being closed);
//! - `error code=<code> msg=<text>` on an unexpected failure (exit status 2).

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use shmbus::{
    ArrayPublisher, GetError, LockError, Mutex, Overflow, PublishFailure, PutFailure, Queue,
    QueueBuilder, RecvError, SendFailure, SerdeQueue, Shared, SharedArray, Topic, Value,
};
use shmbus_core::time::monotonic_ns;
use shmbus_tests::{check_frame, fill_frame, Msg, Rec, Rng, Tally};

use crate::account::{format_seen, Finding, Policy, StreamCheck};

/// Topic settings every participant asks for (so that whoever creates a topic creates it
/// alike).
pub(crate) const CAPACITY: u32 = 16;
pub(crate) const MAX_SUBSCRIBERS: u32 = 8;
/// Every bounded wait of a publisher (back-pressure, the publish lock, pool blocks).
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Receives, gets and puts wait at most this long per call.
const SLICE: Duration = Duration::from_millis(200);
/// Lock waits.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// A bounded wait that returns this much later than its bound is a hang.
pub(crate) const SLACK: Duration = Duration::from_secs(3);
/// Progress lines at least this often.
const BEAT: Duration = Duration::from_millis(100);
/// Joining retries (a dead predecessor's row, a segment being removed) for at most this long.
const JOIN_BOUND: Duration = Duration::from_secs(10);
/// Queue settings.
pub(crate) const QUEUE_CAPACITY: u32 = 16;
pub(crate) const DELIVERY_LIMIT: u32 = 5;
/// Adds a value writer makes between reports: a killed one made at most this many unreported.
pub(crate) const ADD_BATCH: u64 = 200;
/// Updates a words or shared writer makes between reports (+1 for the one in flight).
pub(crate) const UPDATE_BATCH: u64 = 10;
/// Words of the persistent array the attachers check.
pub(crate) const ARRAY_WORDS: usize = 8192;

/// Word `i` of the persistent array.
pub(crate) fn array_word(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_0000_0000_A5A5
}

/// The metadata of the array topics' frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct ChaosFrame {
    pub(crate) producer: u64,
    pub(crate) index: u64,
    pub(crate) len: u64,
}

/// The bytes of frame `index` of `producer` follow from this key.
fn frame_key(producer: u64, index: u64) -> u64 {
    index ^ producer.rotate_left(32)
}

/// Bytes of frame `index`: 256 to 3840.
fn frame_len(index: u64) -> usize {
    256 + (index % 15) as usize * 256
}

#[derive(Subcommand)]
pub(crate) enum WorkerRole {
    /// Publish `Msg` (pod) or `Rec` (serde) messages until told to stop.
    TopicPub(TopicPubArgs),
    /// Receive and check messages until told to stop, then drain.
    TopicSub(TopicSubArgs),
    /// Publish frames on an array topic.
    FramesPub(TopicPubArgs),
    /// Receive and check frames.
    FramesSub(TopicSubArgs),
    /// Put items on a work queue.
    QueuePut(QueuePutArgs),
    /// Take items from a work queue until it is closed.
    QueueGet(QueueGetArgs),
    /// Hold the robust lock, keeping its two counters equal.
    Lock(LockArgs),
    /// Add to a shared atomic `u64`.
    Add(NameIdArgs),
    /// Update a locked `[u64; 32]` value (words kept equal) and check every read.
    Words(NameIdArgs),
    /// Update a shared `Tally` and check every read.
    SharedState(NameIdArgs),
    /// Attach the persistent array, check it, write it back unchanged, detach, again.
    Attach(AttachArgs),
    /// Run `gc` over the run's names again and again, while everything else is in use.
    Gc(GcArgs),
    /// Join a topic as a subscriber, take a few messages, leave, again.
    ChurnSub(TopicSubArgs),
}

#[derive(Args)]
pub(crate) struct GcArgs {
    /// The run's name prefix.
    #[arg(long)]
    prefix: String,
}

#[derive(Args)]
pub(crate) struct TopicPubArgs {
    #[arg(long)]
    topic: String,
    /// `pod` (`Msg`) or `rec` (`Rec`, serde).
    #[arg(long, default_value = "pod")]
    kind: String,
    /// `ow` (overwrite) or `bp` (back-pressure).
    #[arg(long)]
    policy: String,
    #[arg(long, default_value_t = 4)]
    max_pubs: u32,
    /// The producer id written into every message.
    #[arg(long)]
    id: u64,
}

#[derive(Args)]
pub(crate) struct TopicSubArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value = "pod")]
    kind: String,
    #[arg(long)]
    policy: String,
    #[arg(long, default_value_t = 4)]
    max_pubs: u32,
    /// Keep the last sample received until the next one (pod and array topics).
    #[arg(long)]
    hold: bool,
    /// Start this many messages back.
    #[arg(long, default_value_t = 0)]
    history: u32,
}

#[derive(Args)]
pub(crate) struct QueuePutArgs {
    #[arg(long)]
    name: String,
    /// `amo` (at most once), `ack` (acknowledged), `bytes` (acknowledged byte strings).
    #[arg(long)]
    mode: String,
    #[arg(long)]
    id: u64,
}

#[derive(Args)]
pub(crate) struct QueueGetArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    mode: String,
    /// `copy` (get) or `inplace` (receive, report, ack).
    #[arg(long)]
    style: String,
}

#[derive(Args)]
pub(crate) struct LockArgs {
    /// The mutex; its counters are the values `<name>.a`, `<name>.b`, its holder tag
    /// `<name>.h`.
    #[arg(long)]
    name: String,
    /// This holder's tag (never 0).
    #[arg(long)]
    id: u64,
}

#[derive(Args)]
pub(crate) struct NameIdArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    id: u64,
}

#[derive(Args)]
pub(crate) struct AttachArgs {
    #[arg(long)]
    name: String,
    /// Attach read-write and write the words back (else read-only).
    #[arg(long)]
    rw: bool,
    #[arg(long)]
    id: u64,
}

/// An unexpected failure: printed as `error code=<code> msg=<text>`, exit status 2.
pub(crate) struct Fail(pub(crate) String, pub(crate) String);

impl Fail {
    fn new(code: &str, msg: impl std::fmt::Display) -> Fail {
        Fail(code.to_owned(), msg.to_string().replace('\n', " "))
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// `quit` or the end of standard input asks the worker to finish.
fn watch_stdin() {
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "quit" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        STOP.store(true, Ordering::Relaxed);
    });
}

/// Dies with the conductor.
fn tie_to_parent() {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Some(expected) = std::env::var("SHMBUS_TEST_PARENT")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        if parent != expected {
            std::process::exit(3);
        }
    }
}

/// Runs `f`, a wait bounded by `bound`; reports a hang if it took more than `bound + SLACK`.
fn timed<R>(op: &str, bound: Duration, f: impl FnOnce() -> R) -> R {
    let start = monotonic_ns();
    let r = f();
    let end = monotonic_ns();
    let elapsed = Duration::from_nanos(end.saturating_sub(start));
    if elapsed > bound + SLACK {
        println!(
            "hang op={op} bound_ms={} elapsed_ms={} start_ns={start} end_ns={end}",
            bound.as_millis(),
            elapsed.as_millis()
        );
    }
    r
}

/// Retries `f` (a join) until it succeeds or [`JOIN_BOUND`] passes.
fn join<T, E: std::fmt::Display>(
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, Fail> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(t) => return Ok(t),
            Err(e) if start.elapsed() > JOIN_BOUND => {
                return Err(Fail::new("join", format!("{what}: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `ready ns=<now>`: joined (every message published after `ns` is this subscriber's to see).
fn ready() {
    println!("ready ns={}", monotonic_ns());
}

/// Prints a finding of a check.
fn report(f: Finding, what: &str) {
    match f {
        Finding::Lost(n) => println!("viol kind=lost n={n} what={what}"),
        Finding::Duplicated(n) => println!("viol kind=dup n={n} what={what}"),
        Finding::Corrupted(n) => println!("viol kind=corrupt n={n} what={what}"),
        Finding::Hole(n) => println!("hole n={n}"),
        Finding::JoinLag(n) => println!("joinlag n={n}"),
    }
}

/// Every `BEAT`, `true`.
struct Beat(Instant);

impl Beat {
    fn new() -> Beat {
        Beat(Instant::now())
    }

    fn due(&mut self) -> bool {
        if self.0.elapsed() >= BEAT {
            self.0 = Instant::now();
            true
        } else {
            false
        }
    }
}

pub(crate) fn run(role: &WorkerRole) -> Result<(), Fail> {
    tie_to_parent();
    watch_stdin();
    match role {
        WorkerRole::TopicPub(a) => topic_pub(a),
        WorkerRole::TopicSub(a) => topic_sub(a),
        WorkerRole::FramesPub(a) => frames_pub(a),
        WorkerRole::FramesSub(a) => frames_sub(a),
        WorkerRole::QueuePut(a) => queue_put(a),
        WorkerRole::QueueGet(a) => queue_get(a),
        WorkerRole::Lock(a) => lock(a),
        WorkerRole::Add(a) => add(a),
        WorkerRole::Words(a) => words(a),
        WorkerRole::SharedState(a) => shared_state(a),
        WorkerRole::Attach(a) => attach(a),
        WorkerRole::Gc(a) => gc(a),
        WorkerRole::ChurnSub(a) => churn_sub(a),
    }
}

fn policy(s: &str) -> Result<Policy, Fail> {
    Policy::parse(s).ok_or_else(|| Fail::new("usage", format!("policy {s:?}")))
}

/// The topic as every participant describes it.
pub(crate) fn topic_builder(name: &str, p: Policy, max_pubs: u32) -> Topic {
    Topic::builder(name)
        .capacity(CAPACITY)
        .overflow(match p {
            Policy::Overwrite => Overflow::Overwrite,
            Policy::BackPressure => Overflow::BackPressure,
        })
        .max_subscribers(MAX_SUBSCRIBERS)
        .max_publishers(max_pubs)
        .publish_timeout(Some(PUBLISH_TIMEOUT))
}

enum Pub {
    Pod(shmbus::Publisher<Msg>),
    Serde(shmbus::SerdePublisher<Rec>),
}

/// Whether a send failed only because its bounded wait ran out (the message is sent again).
fn retryable(f: &SendFailure) -> bool {
    matches!(
        f,
        SendFailure::Publish(PublishFailure::Timeout) | SendFailure::NoSlot
    )
}

impl Pub {
    /// Publishes message `index`: even ones with `send`, odd ones in place through a loan.
    /// `Ok(false)`: its wait ran out, nothing was published.
    fn send(&mut self, producer: u64, index: u64) -> Result<bool, Fail> {
        let r = match self {
            Pub::Pod(p) if index % 2 == 1 => {
                let mut loan = match p.loan() {
                    Ok(l) => l,
                    Err(shmbus::LoanError::PoolExhausted(_)) => return Ok(false),
                    Err(e) => return Err(Fail::new("loan", e)),
                };
                *loan = Msg::new(producer, index);
                return match loan.publish() {
                    Ok(_) => Ok(true),
                    Err(e) if matches!(e.reason(), PublishFailure::Timeout) => Ok(false),
                    Err(e) => Err(Fail::new("publish", e)),
                };
            }
            Pub::Pod(p) => p.send(Msg::new(producer, index)).map(drop).map_err(|e| {
                let ok = retryable(e.reason());
                (ok, e.to_string())
            }),
            Pub::Serde(p) => p.send(Rec::new(producer, index)).map(drop).map_err(|e| {
                let ok = retryable(e.reason());
                (ok, e.to_string())
            }),
        };
        match r {
            Ok(()) => Ok(true),
            Err((true, _)) => Ok(false),
            Err((false, e)) => Err(Fail::new("send", e)),
        }
    }
}

fn topic_pub(a: &TopicPubArgs) -> Result<(), Fail> {
    let p = policy(&a.policy)?;
    let t = topic_builder(&a.topic, p, a.max_pubs);
    let mut publisher = match a.kind.as_str() {
        "pod" => Pub::Pod(join("publisher", || t.publisher::<Msg>())?),
        "rec" => Pub::Serde(join("publisher", || t.serde_publisher::<Rec>())?),
        k => return Err(Fail::new("usage", format!("kind {k:?}"))),
    };
    ready();
    let mut sent = 0u64;
    let mut timeouts = 0u64;
    let mut beat = Beat::new();
    let mut rng = Rng::from_seed(a.id);
    while !stopping() {
        for _ in 0..rng.range(1, 9) {
            if timed("publish", PUBLISH_TIMEOUT, || publisher.send(a.id, sent))? {
                sent += 1;
            } else {
                timeouts += 1;
                break;
            }
        }
        if beat.due() {
            println!("prog sent={sent} ns={}", monotonic_ns());
        }
        std::thread::sleep(Duration::from_micros(rng.range(500, 3000)));
    }
    println!("final sent={sent} timeouts={timeouts}");
    drop(publisher);
    Ok(())
}

/// A received message: (seq, producer, index, intact).
type Got = (u64, u64, u64, bool);

/// Keeps the last sample received (with `--hold`), so that a kill often finds one held, and
/// checks that a held sample did not change while it was held.
struct Keep<S> {
    on: bool,
    held: Option<(S, Got)>,
}

impl<S> Keep<S> {
    fn new(on: bool) -> Keep<S> {
        Keep { on, held: None }
    }

    /// Holds `s` (received as `got`), releasing the one held before after `recheck`ing it.
    fn keep(&mut self, s: S, got: Got, recheck: impl Fn(&S) -> Got) {
        if let Some((old, was)) = self.held.take() {
            let now = recheck(&old);
            if now != was {
                let what = format!("held-sample-changed-from-{was:?}-to-{now:?}").replace(' ', "");
                println!("viol kind=corrupt n=1 what={what}");
            }
        }
        if self.on {
            self.held = Some((s, got));
        }
    }
}

fn pod_got(s: &shmbus::Sample<'_, Msg>) -> Got {
    (s.seq(), s.producer, s.index, s.is_intact())
}

fn frame_got(s: &shmbus::ArraySample<'_, ChaosFrame>) -> Got {
    let m = *s.meta();
    let bytes = s.bytes();
    let intact = bytes.len() as u64 == m.len
        && bytes.len() == frame_len(m.index)
        && s.shape() == [bytes.len()]
        && check_frame(frame_key(m.producer, m.index), bytes).is_none();
    (s.seq(), m.producer, m.index, intact)
}

/// Receives until told to stop, then until every publisher is gone (or a second of quiet);
/// prints `final producers=<id:first:last:count,...> received= lagged= end=`.
fn subscribe(
    mut next: impl FnMut() -> Result<Got, RecvError>,
    p: Policy,
    what: &str,
) -> Result<(), Fail> {
    ready();
    let mut check = StreamCheck::new(p);
    let mut beat = Beat::new();
    let mut quiet_since: Option<Instant> = None;
    let end = loop {
        let draining = stopping();
        match timed("recv", SLICE, &mut next) {
            Ok((seq, producer, index, intact)) => {
                quiet_since = None;
                for f in check.message(seq, producer, index, intact) {
                    report(f, &format!("{what}-p{producer}-i{index}-s{seq}"));
                }
            }
            Err(RecvError::Lagged(n)) => {
                if let Some(f) = check.lag(n) {
                    report(f, &format!("{what}-lag"));
                }
            }
            Err(RecvError::Timeout) => {
                if draining && quiet_since.get_or_insert_with(Instant::now).elapsed() > BEAT * 10 {
                    break "quiet";
                }
            }
            Err(RecvError::Disconnected) => {
                if draining {
                    break "disconnected";
                }
                // Every publisher is dead right now; replacements come.
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(RecvError::Decode(e)) => report(
                Finding::Corrupted(1),
                &format!("decode:{e}").replace(' ', "_"),
            ),
            Err(RecvError::BadDescriptor { .. }) => println!("baddesc n=1"),
            Err(e) => return Err(Fail::new("recv", e)),
        }
        if beat.due() {
            println!("prog received={}", check.received);
        }
    };
    println!(
        "final producers={} received={} lagged={} end={end}",
        format_seen(check.producers()),
        check.received,
        check.lagged
    );
    Ok(())
}

fn topic_sub(a: &TopicSubArgs) -> Result<(), Fail> {
    let p = policy(&a.policy)?;
    let t = topic_builder(&a.topic, p, a.max_pubs).history(a.history);
    match a.kind.as_str() {
        "pod" => {
            let sub = join("subscriber", || t.subscriber::<Msg>())?;
            let mut keep = Keep::new(a.hold);
            let next = || {
                let s = sub.recv_timeout(SLICE)?;
                let got = pod_got(&s);
                keep.keep(s, got, pod_got);
                Ok(got)
            };
            subscribe(next, p, "pod")
        }
        "rec" => {
            let sub = join("subscriber", || t.serde_subscriber::<Rec>())?;
            let next = || {
                let (seq, r) = sub.recv_timeout_with_seq(SLICE)?;
                Ok((seq, r.producer, r.index, r.is_intact()))
            };
            subscribe(next, p, "rec")
        }
        k => Err(Fail::new("usage", format!("kind {k:?}"))),
    }
}

fn frames_builder(name: &str, p: Policy) -> Topic {
    topic_builder(name, p, 1).pool_max_bytes(8 << 20)
}

fn frames_pub(a: &TopicPubArgs) -> Result<(), Fail> {
    let p = policy(&a.policy)?;
    let t = frames_builder(&a.topic, p);
    let mut publisher: ArrayPublisher<ChaosFrame> =
        join("array publisher", || t.array_publisher::<ChaosFrame>())?;
    ready();
    let (mut sent, mut timeouts) = (0u64, 0u64);
    let mut beat = Beat::new();
    let mut rng = Rng::from_seed(a.id);
    while !stopping() {
        for _ in 0..rng.range(1, 5) {
            let len = frame_len(sent);
            let ok = timed("publish", PUBLISH_TIMEOUT, || -> Result<bool, Fail> {
                let mut loan = match publisher.loan::<u8>(&[len]) {
                    Ok(l) => l,
                    Err(shmbus::PoolLoanError::Exhausted { .. }) => return Ok(false),
                    Err(e) => return Err(Fail::new("loan", e)),
                };
                let (block, meta) = loan.parts_mut();
                fill_frame(frame_key(a.id, sent), block);
                *meta = ChaosFrame {
                    producer: a.id,
                    index: sent,
                    len: len as u64,
                };
                match loan.publish() {
                    Ok(_) => Ok(true),
                    Err(e) if matches!(e.reason(), PublishFailure::Timeout) => Ok(false),
                    Err(e) => Err(Fail::new("publish", e)),
                }
            })?;
            if ok {
                sent += 1;
            } else {
                timeouts += 1;
                break;
            }
        }
        if beat.due() {
            println!("prog sent={sent} ns={}", monotonic_ns());
        }
        std::thread::sleep(Duration::from_micros(rng.range(1000, 4000)));
    }
    println!("final sent={sent} timeouts={timeouts}");
    drop(publisher);
    Ok(())
}

fn frames_sub(a: &TopicSubArgs) -> Result<(), Fail> {
    let p = policy(&a.policy)?;
    let t = frames_builder(&a.topic, p).history(a.history);
    let sub = join("array subscriber", || t.array_subscriber::<ChaosFrame>())?;
    let mut keep = Keep::new(a.hold);
    let next = || {
        let s = sub.recv_timeout(SLICE)?;
        let got = frame_got(&s);
        keep.keep(s, got, frame_got);
        Ok(got)
    };
    subscribe(next, p, "frames")
}

/// The queue as every participant describes it (the conductor created it).
pub(crate) fn queue_builder(name: &str, mode: &str) -> QueueBuilder {
    let b = QueueBuilder::new(name).capacity(QUEUE_CAPACITY);
    if mode == "amo" {
        b.at_most_once()
    } else {
        b.acknowledged(DELIVERY_LIMIT)
    }
}

enum AnyQueue {
    Pod(Queue<Msg>),
    Bytes(SerdeQueue<Vec<u8>>),
}

fn open_queue(name: &str, mode: &str) -> Result<AnyQueue, Fail> {
    let b = queue_builder(name, mode).existing();
    Ok(match mode {
        "amo" | "ack" => AnyQueue::Pod(join("queue", || b.open::<Msg>())?),
        "bytes" => AnyQueue::Bytes(join("queue", || b.open_serde::<Vec<u8>>())?),
        m => return Err(Fail::new("usage", format!("mode {m:?}"))),
    })
}

/// A queue item's bytes as a `Msg` (and whether they are one).
pub(crate) fn msg_from_bytes(b: &[u8]) -> (Msg, bool) {
    if b.len() != size_of::<Msg>() {
        return (Msg::new(0, 0), false);
    }
    let m: Msg = bytemuck::pod_read_unaligned(b);
    (m, m.is_intact())
}

fn queue_put(a: &QueuePutArgs) -> Result<(), Fail> {
    let q = open_queue(&a.name, &a.mode)?;
    ready();
    let (mut put, mut waits) = (0u64, 0u64);
    let mut beat = Beat::new();
    let mut rng = Rng::from_seed(a.id);
    while !stopping() {
        let m = Msg::new(a.id, put);
        let r = timed("put", SLICE, || match &q {
            AnyQueue::Pod(q) => q.put_timeout(m, SLICE).map_err(|e| e.into_parts().1),
            AnyQueue::Bytes(q) => q
                .put_timeout(bytemuck::bytes_of(&m).to_vec(), SLICE)
                .map_err(|e| e.into_parts().1),
        });
        match r {
            Ok(()) => put += 1,
            Err(PutFailure::Timeout | PutFailure::Full) => waits += 1,
            Err(PutFailure::Closed) => break,
            Err(e) => return Err(Fail::new("put", e)),
        }
        if beat.due() {
            println!("prog put={put}");
        }
        std::thread::sleep(Duration::from_micros(rng.range(200, 2000)));
    }
    println!("final put={put} waits={waits}");
    Ok(())
}

fn queue_get(a: &QueueGetArgs) -> Result<(), Fail> {
    let q = open_queue(&a.name, &a.mode)?;
    let copy = match a.style.as_str() {
        "copy" => true,
        "inplace" => false,
        s => return Err(Fail::new("usage", format!("style {s:?}"))),
    };
    ready();
    let mut got = 0u64;
    let mut beat = Beat::new();
    let seen = |m: &Msg, d: u32, ok: bool| {
        println!("got p={} i={} d={d} ok={ok}", m.producer, m.index);
    };
    // Some "work" while an in-place delivery is held: a kill then finds it taken.
    let work = |i: u64| {
        if i % 4 == 0 {
            std::thread::sleep(Duration::from_micros(50 + i % 400));
        }
    };
    // In acknowledged mode a copy is acknowledged as it is made: its delivery number is not
    // known (0).
    let copy_d = u32::from(a.mode == "amo");
    loop {
        let r: Result<(), GetError> = timed("get", SLICE, || match (&q, copy) {
            (AnyQueue::Pod(q), true) => q.get_timeout(SLICE).map(|m| {
                let ok = m.is_intact();
                seen(&m, copy_d, ok);
            }),
            (AnyQueue::Pod(q), false) => {
                let d = q.receive_timeout(SLICE)?;
                let m = *d;
                seen(&m, d.deliveries(), m.is_intact());
                work(m.index);
                d.ack()
            }
            (AnyQueue::Bytes(q), true) => q.get_timeout(SLICE).map(|b| {
                let (m, ok) = msg_from_bytes(&b);
                seen(&m, copy_d, ok);
            }),
            (AnyQueue::Bytes(q), false) => {
                let d = q.receive_timeout(SLICE)?;
                let (m, ok) = msg_from_bytes(d.value());
                seen(&m, d.deliveries(), ok);
                work(m.index);
                d.ack()
            }
        });
        match r {
            Ok(()) => got += 1,
            Err(GetError::Timeout | GetError::Empty) => {}
            Err(GetError::Closed) => break,
            Err(GetError::Reclaimed) => {
                // This live consumer was taken for dead: its item goes to another one too.
                println!("viol kind=dup n=1 what=reclaimed-while-alive");
            }
            Err(GetError::Decode(e)) => {
                println!("viol kind=corrupt n=1 what=decode:{}", e.replace(' ', "_"))
            }
            Err(e) => return Err(Fail::new("get", e)),
        }
        if beat.due() {
            println!("prog got={got}");
        }
    }
    println!("final got={got}");
    Ok(())
}

/// The names of the lock's counters and holder tag.
pub(crate) fn lock_parts(name: &str) -> [String; 3] {
    [
        format!("{name}.a"),
        format!("{name}.b"),
        format!("{name}.h"),
    ]
}

fn lock(a: &LockArgs) -> Result<(), Fail> {
    let m = join("mutex", || Mutex::<u64>::open(&a.name))?;
    let [an, bn, hn] = lock_parts(&a.name);
    let ca = join("value a", || Value::<u64>::open(&an))?;
    let cb = join("value b", || Value::<u64>::open(&bn))?;
    let holder = join("value h", || Value::<u64>::open(&hn))?;
    let load = |v: &Value<u64>| v.load().map_err(|e| Fail::new("value", e));
    let store = |v: &Value<u64>, x: u64| v.store(x).map_err(|e| Fail::new("value", e));
    ready();
    let (mut done, mut timeouts) = (0u64, 0u64);
    let mut beat = Beat::new();
    let mut rng = Rng::from_seed(a.id);
    while !stopping() {
        match timed("lock", LOCK_TIMEOUT, || m.lock_timeout(LOCK_TIMEOUT)) {
            Ok(mut g) => {
                let (x, y, h) = (load(&ca)?, load(&cb)?, load(&holder)?);
                if g.owner_died() {
                    store(&holder, a.id)?;
                    store(&cb, x)?;
                    g.mark_consistent();
                    println!("recovered dead={h} gap={}", x.wrapping_sub(y));
                } else if x != y || h != 0 {
                    println!("viol kind=corrupt n=1 what=lock-a{x}-b{y}-h{h}");
                    store(&cb, x)?;
                }
                store(&holder, a.id)?;
                let x = load(&ca)?;
                store(&ca, x.wrapping_add(1))?;
                // Work under the lock, so that kills find it held.
                std::thread::sleep(Duration::from_micros(rng.range(10, 600)));
                store(&cb, x.wrapping_add(1))?;
                store(&holder, 0)?;
                drop(g);
                done += 1;
            }
            Err(LockError::Timeout) => timeouts += 1,
            Err(e) => return Err(Fail::new("lock", e)),
        }
        if beat.due() {
            println!("prog done={done}");
        }
        std::thread::sleep(Duration::from_micros(rng.range(200, 2000)));
    }
    println!("final done={done} timeouts={timeouts}");
    Ok(())
}

fn add(a: &NameIdArgs) -> Result<(), Fail> {
    let v = join("value", || Value::<u64>::open(&a.name))?;
    ready();
    let mut added = 0u64;
    let mut rng = Rng::from_seed(a.id);
    while !stopping() {
        for _ in 0..ADD_BATCH {
            v.fetch_add(1);
        }
        added += ADD_BATCH;
        println!("prog added={added}");
        std::thread::sleep(Duration::from_micros(rng.range(2000, 8000)));
    }
    println!("final added={added}");
    Ok(())
}

/// The locked value of the words writers: 32 equal words.
pub(crate) type Words = [u64; 32];

fn words(a: &NameIdArgs) -> Result<(), Fail> {
    let v = join("value", || Value::<Words>::open(&a.name))?;
    ready();
    let (mut updates, mut last) = (0u64, 0u64);
    let mut rng = Rng::from_seed(a.id);
    let mut check = |w: Words, what: &str| {
        if w.iter().any(|&x| x != w[0]) || w[0] < last {
            println!(
                "viol kind=corrupt n=1 what=words-{what}-{}-after-{last}",
                w[0]
            );
        }
        last = last.max(w[0]);
    };
    while !stopping() {
        for _ in 0..UPDATE_BATCH {
            let w = timed("update", LOCK_TIMEOUT, || {
                v.update(|w: Words| [w[0].wrapping_add(1); 32])
            })
            .map_err(|e| Fail::new("update", e))?;
            updates += 1;
            check(w, "update");
            let w = timed("load", LOCK_TIMEOUT, || v.load()).map_err(|e| Fail::new("load", e))?;
            check(w, "load");
        }
        println!("prog updates={updates}");
        std::thread::sleep(Duration::from_micros(rng.range(1000, 5000)));
    }
    println!("final updates={updates}");
    Ok(())
}

fn shared_state(a: &NameIdArgs) -> Result<(), Fail> {
    let s = join("shared", || Shared::<Tally>::open(&a.name))?;
    ready();
    let (mut updates, mut last) = (0u64, 0u64);
    let mut rng = Rng::from_seed(a.id);
    while !stopping() {
        for _ in 0..UPDATE_BATCH {
            timed("update", LOCK_TIMEOUT, || s.update(Tally::bump))
                .map_err(|e| Fail::new("update", e))?;
            updates += 1;
            let (t, _) = s.load().map_err(|e| Fail::new("load", e))?;
            if !t.is_complete() || t.n < last {
                println!("viol kind=corrupt n=1 what=tally-{}-after-{last}", t.n);
            }
            last = last.max(t.n);
        }
        println!("prog updates={updates}");
        std::thread::sleep(Duration::from_micros(rng.range(1000, 5000)));
    }
    println!("final updates={updates}");
    Ok(())
}

fn attach(a: &AttachArgs) -> Result<(), Fail> {
    ready();
    let mut rounds = 0u64;
    let mut beat = Beat::new();
    let mut rng = Rng::from_seed(a.id);
    let want: Vec<u64> = (0..ARRAY_WORDS).map(array_word).collect();
    while !stopping() {
        let words = if a.rw {
            let arr = join("array", || SharedArray::<u64>::attach(&a.name))?;
            let from = rng.range(0, ARRAY_WORDS as u64) as usize;
            let to = rng.range(from as u64, ARRAY_WORDS as u64 + 1) as usize;
            arr.write_at(from, &want[from..to])
                .map_err(|e| Fail::new("array", e))?;
            arr.to_vec()
        } else {
            let arr = join("array", || SharedArray::<u64>::attach_read_only(&a.name))?;
            arr.to_vec()
        };
        let bad = words.iter().zip(&want).filter(|(x, y)| x != y).count();
        if words.len() != ARRAY_WORDS || bad > 0 {
            println!(
                "viol kind=corrupt n=1 what=array-{}-words-{bad}-differ",
                words.len()
            );
        }
        rounds += 1;
        if beat.due() {
            println!("prog rounds={rounds}");
        }
        std::thread::sleep(Duration::from_micros(rng.range(1000, 4000)));
    }
    println!("final rounds={rounds}");
    Ok(())
}

/// `gc` must only ever remove what nobody uses: every other role notices otherwise (a topic,
/// queue or value removed under its users splits them from the newcomers).
fn gc(a: &GcArgs) -> Result<(), Fail> {
    ready();
    let (mut rounds, mut removed) = (0u64, 0u64);
    let mut beat = Beat::new();
    let mut rng = Rng::from_seed(rounds ^ u64::from(std::process::id()));
    while !stopping() {
        let r = timed("gc", Duration::ZERO, || {
            shmbus_core::segment::gc_report_prefix(&a.prefix, false)
        })
        .map_err(|e| Fail::new("gc", e))?;
        removed += r.removed.len() as u64;
        for u in &r.unreadable {
            println!(
                "viol kind=corrupt n=1 what=unreadable-{}",
                format!("{u:?}").replace(' ', "_")
            );
        }
        rounds += 1;
        if beat.due() {
            println!("prog rounds={rounds} removed={removed}");
        }
        std::thread::sleep(Duration::from_micros(rng.range(5_000, 50_000)));
    }
    println!("final rounds={rounds} removed={removed}");
    Ok(())
}

/// Subscribers that come and go: each join takes a few messages (checked as a stream of its
/// own), then leaves. `kind` `pod` or `frames`.
fn churn_sub(a: &TopicSubArgs) -> Result<(), Fail> {
    let p = policy(&a.policy)?;
    ready();
    let mut rng = Rng::from_seed(u64::from(std::process::id()));
    let (mut joins, mut received) = (0u64, 0u64);
    let mut beat = Beat::new();
    while !stopping() {
        let want = rng.range(1, 40);
        let until = Instant::now() + Duration::from_millis(rng.range(20, 300));
        let mut check = StreamCheck::new(p);
        let take = |got: Result<Got, RecvError>, check: &mut StreamCheck| -> Result<bool, Fail> {
            match got {
                Ok((seq, producer, index, intact)) => {
                    for f in check.message(seq, producer, index, intact) {
                        report(f, &format!("churn-p{producer}-i{index}-s{seq}"));
                    }
                    Ok(true)
                }
                Err(RecvError::Lagged(n)) => {
                    if let Some(f) = check.lag(n) {
                        report(f, "churn-lag");
                    }
                    Ok(true)
                }
                Err(RecvError::Timeout | RecvError::Disconnected) => Ok(false),
                Err(RecvError::BadDescriptor { .. }) => {
                    println!("baddesc n=1");
                    Ok(true)
                }
                Err(e) => Err(Fail::new("recv", e)),
            }
        };
        match a.kind.as_str() {
            "pod" => {
                let t = topic_builder(&a.topic, p, a.max_pubs);
                let sub = join("subscriber", || t.subscriber::<Msg>())?;
                while check.received < want && Instant::now() < until {
                    let got = timed("recv", SLICE, || {
                        sub.recv_timeout(SLICE).map(|s| pod_got(&s))
                    });
                    take(got, &mut check)?;
                }
            }
            "frames" => {
                let t = frames_builder(&a.topic, p);
                let sub = join("array subscriber", || t.array_subscriber::<ChaosFrame>())?;
                while check.received < want && Instant::now() < until {
                    let got = timed("recv", SLICE, || {
                        sub.recv_timeout(SLICE).map(|s| frame_got(&s))
                    });
                    take(got, &mut check)?;
                }
            }
            k => return Err(Fail::new("usage", format!("kind {k:?}"))),
        }
        joins += 1;
        received += check.received;
        if beat.due() {
            println!("prog joins={joins} received={received}");
        }
        std::thread::sleep(Duration::from_micros(rng.range(0, 20_000)));
    }
    println!("final joins={joins} received={received}");
    Ok(())
}

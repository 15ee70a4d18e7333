//! The other processes of the multi-process tests: one role per subcommand.
//!
//! Every role prints machine-readable lines to stdout: a tag, then `key=value` fields (see
//! `shmbus_tests::Line`). `ready` once it has joined; `error code=<code> msg=<text>` when
//! something fails (and exits with status 2); a role-specific summary at the end.
// Unsafe code only where the fork role calls fork(2) (`#[allow]` on that one call).
#![deny(unsafe_code)]

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[path = "shmbus-test-peer/arrays.rs"]
mod arrays;
#[path = "shmbus-test-peer/fork.rs"]
mod fork;
#[path = "shmbus-test-peer/hostile.rs"]
mod hostile;
#[path = "shmbus-test-peer/identity.rs"]
mod identity;
#[path = "shmbus-test-peer/pressure.rs"]
mod pressure;
#[path = "shmbus-test-peer/queue.rs"]
mod queue;
#[path = "shmbus-test-peer/stale.rs"]
mod stale;
#[path = "shmbus-test-peer/values.rs"]
mod values;
use shmbus::{
    Event, EventMode, LoanError, LockError, Mutex, Overflow, PublishError, PublishFailure,
    Publisher, RecvError, Semaphore, SendError, SendFailure, SerdePublisher, SerdeSubscriber,
    Subscriber, Topic,
};
use shmbus_tests::{open_error_code, CompactMsg, Msg, OtherMsg, Rec, SmallMsg};

#[derive(Parser)]
#[command(about = "peer process of the shmbus multi-process tests")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Publish `--count` messages (or forever), then exit (or hold the topic with `--hold`).
    Publish(PublishArgs),
    /// Publish on command: `send N` publishes N more messages, `quit` exits.
    PubRepl(TopicArgs),
    /// Receive and verify messages; print a summary.
    Subscribe(SubscribeArgs),
    /// Join as a subscriber, take `--hold` samples and keep them until killed.
    Hold(HoldArgs),
    /// Lock the named mutex, mark its value dirty, and sleep until killed.
    HoldLock(MutexArgs),
    /// Lock the named mutex once (repairing it after a dead owner with `--repair`), unlock, exit.
    Lock(LockArgs),
    /// Wait (bounded) for a unit of the existing semaphore `--name`; print the outcome.
    SemWait(WaitArgs),
    /// Post `--count` units to the existing semaphore `--name`.
    SemPost(PostArgs),
    /// Wait (bounded) for the event `--name`; print the outcome.
    EventWait(EventWaitArgs),
    /// Set (or with `--reset`, reset) the existing event `--name`.
    EventSet(EventSetArgs),
    /// Send `--count` byte strings (`serde_publisher::<Vec<u8>>`, what Python's bytes topics
    /// use): message `i` is `bytes_message(i)`.
    BytesPub(BytesArgs),
    /// Receive `--count` byte strings and check each is `bytes_message(i)`; print a summary.
    BytesSub(BytesArgs),
    /// Try to join a topic; print `ok` or the error.
    Open(OpenArgs),
    /// Print `ready` and sleep until killed.
    Idle,
    /// Run `shmbus_core::segment::gc()` (repeatedly with `--for-ms`); print what it removed.
    Gc(GcArgs),
    /// Create and drop the topic `--topic` as fast as possible for `--for-ms`; print a summary.
    Churn(ChurnArgs),
    /// Create a raw segment of `--size` payload bytes; print `result` (created or the error).
    SegmentCreate(SegmentCreateArgs),
    /// Publish `--count` verifiable frames on an array topic.
    FramesPub(arrays::FramesPubArgs),
    /// Receive and verify frames; print a summary.
    FramesSub(arrays::FramesSubArgs),
    /// Take `--hold` frames and keep them until killed (`check` re-verifies them).
    FramesHold(arrays::FramesHoldArgs),
    /// Publish a real frame, forged descriptors, and a real frame again.
    FramesForge(arrays::ForgeArgs),
    /// Create a named array.
    ArrayCreate(arrays::ArrayCreateArgs),
    /// Attach a named array; print its shape and sum.
    ArrayAttach(arrays::ArrayAttachArgs),
    /// Make handles, fork, and report what parent and child can do with them.
    Fork(fork::ForkArgs),
    /// Await through the async waiter thread, fork, and report what the child can await.
    ForkAsync(fork::ForkAsyncArgs),
    /// Print the name and layout fingerprint of this binary's `shmbus::Message` types.
    IdentLayouts,
    /// Join a topic with one of this binary's `shmbus::Message` types (publishing with
    /// `--publisher`).
    IdentOpen(identity::IdentOpenArgs),
    /// Hostile-writer tests: publish, subscribe or churn on a topic for `--for-ms`, counting
    /// every outcome (see `shmbus-test-peer/hostile.rs`).
    HTopic(hostile::TopicRoleArgs),
    /// Hostile-writer tests: the same on an array topic.
    HFrames(hostile::FramesRoleArgs),
    /// Hostile-writer tests: hold or take a named mutex.
    HMutex(hostile::SyncRoleArgs),
    /// Hostile-writer tests: post to or wait on a named semaphore.
    HSem(hostile::SyncRoleArgs),
    /// Hostile-writer tests: set or wait on a named event.
    HEvent(hostile::SyncRoleArgs),
    /// Hostile-writer tests: own, read or write a named array.
    HArray(hostile::SyncRoleArgs),
    /// Hostile-writer tests: open a topic once, raw (with a timeout) and typed, timed.
    HOpen(hostile::OpenProbeArgs),
    /// Hostile-writer tests: write boundary values and random bytes into live segments.
    HScribble(hostile::ScribbleArgs),
    /// Hostile-writer tests: attach a segment and keep it until killed.
    HHold(hostile::HoldArgs),
    /// Run a command that dies with the test (the `shmbus` CLI).
    HExec(hostile::ExecArgs),
    /// Put verifiable items on a work queue (`--count`, or until killed).
    QueuePut(queue::QueuePutArgs),
    /// Puts byte strings into an existing `SerdeQueue<Vec<u8>>` (a Python `shmbus.Queue`).
    QueuePutBytes(queue::QueuePutBytesArgs),
    /// Take items from a work queue until it is closed, reporting each (or hold some).
    QueueGet(queue::QueueGetArgs),
    /// Put verifiable `u32` arrays on an array queue (or loan one and hold it until killed).
    ArrayQueuePut(queue::ArrayQueuePutArgs),
    /// Take arrays from an array queue until it is closed, verifying each (or hold some).
    ArrayQueueGet(queue::ArrayQueueGetArgs),
    /// Add 1 to a shared `u64` value `--count` times.
    ValueAdd(values::ValueAddArgs),
    /// Update a shared 256-byte value (kept consistent) until killed.
    ValueScribble(values::ValueScribbleArgs),
    /// Pass `--rounds` generations of a barrier (0: join and never arrive).
    BarrierWait(values::BarrierArgs),
    /// Update a shared serde state `--count` times (0: until killed).
    SharedUpdate(values::SharedArgs),
    /// In a small private `/dev/shm`: make one object of each kind, fill the rest, check that
    /// every creation is refused with `OutOfSpace` and that the objects made keep working.
    SmallShm(pressure::SmallShmArgs),
    /// Create one-page values until the file system runs out of inodes.
    FewInodes(pressure::FewInodesArgs),
    /// Hold one object of each kind (topic, queue, mutex, barrier, value, array) per prefix,
    /// as their owner (`check` and `quit` on stdin) or as a joiner, until killed.
    HoldObjects(stale::HoldObjectsArgs),
    /// As PID 1 of a new PID namespace: kill holders and give their pids to new processes
    /// (`ns_last_pid`), reporting what is reclaimed and what is kept.
    PidReuse(stale::PidReuseArgs),
    /// Create, open, use and drop objects in a loop while gc runs elsewhere; print a summary.
    GcRaceUser(stale::GcRaceArgs),
    /// Run `shmbus gc` (the CLI) in a loop; print a summary.
    GcCliLoop(stale::GcCliArgs),
}

#[derive(Args)]
struct GcArgs {
    #[arg(long, default_value_t = 0)]
    for_ms: u64,
    /// Only names starting with this (`gc_report_prefix`).
    #[arg(long, default_value = "")]
    prefix: String,
}

#[derive(Args)]
struct ChurnArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 1000)]
    for_ms: u64,
}

#[derive(Args)]
struct SegmentCreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MsgType {
    /// `shmbus_tests::Msg`, plain old data.
    Msg,
    /// `shmbus_tests::Rec`, serde.
    Rec,
    /// `shmbus_tests::OtherMsg`: same size as `Msg`, other name.
    Other,
    /// `shmbus_tests::SmallMsg`: other size.
    Small,
    /// `shmbus_tests::CompactMsg`: 48 bytes, carried in the ring entries too (publish and
    /// subscribe only; a subscriber always copies, in batches of `--batch`, at least 1).
    Compact,
}

#[derive(Clone, Copy, ValueEnum)]
enum OverflowArg {
    Overwrite,
    BackPressure,
}

#[derive(Args)]
struct TopicArgs {
    #[arg(long)]
    topic: String,
    #[arg(long = "type", value_enum, default_value_t = MsgType::Msg)]
    msg_type: MsgType,
    #[arg(long)]
    capacity: Option<u32>,
    #[arg(long, value_enum)]
    overflow: Option<OverflowArg>,
    #[arg(long, default_value_t = 0)]
    history: u32,
    #[arg(long)]
    max_subscribers: Option<u32>,
    #[arg(long)]
    max_publishers: Option<u32>,
    #[arg(long)]
    max_held: Option<u32>,
    #[arg(long)]
    slot_size: Option<u32>,
    /// Octal permission bits for a topic this process creates.
    #[arg(long)]
    mode: Option<String>,
    /// 0: no limit.
    #[arg(long, default_value_t = 5000)]
    publish_timeout_ms: u64,
}

impl TopicArgs {
    fn builder(&self) -> Topic {
        let mut t = Topic::builder(&self.topic)
            .history(self.history)
            .publish_timeout(match self.publish_timeout_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            });
        if let Some(c) = self.capacity {
            t = t.capacity(c);
        }
        if let Some(o) = self.overflow {
            t = t.overflow(match o {
                OverflowArg::Overwrite => Overflow::Overwrite,
                OverflowArg::BackPressure => Overflow::BackPressure,
            });
        }
        if let Some(n) = self.max_subscribers {
            t = t.max_subscribers(n);
        }
        if let Some(n) = self.max_publishers {
            t = t.max_publishers(n);
        }
        if let Some(n) = self.max_held {
            t = t.max_held(n);
        }
        if let Some(n) = self.slot_size {
            t = t.slot_size(n);
        }
        if let Some(m) = &self.mode {
            t = t.mode(u32::from_str_radix(m, 8).expect("octal mode"));
        }
        t
    }
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    topic: TopicArgs,
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Publish until killed (ignores --count).
    #[arg(long)]
    forever: bool,
    /// After publishing, keep the topic open until killed.
    #[arg(long)]
    hold: bool,
    /// Pause between messages.
    #[arg(long, default_value_t = 0)]
    interval_us: u64,
    /// Print `sent index=.. seq=..` after every message.
    #[arg(long)]
    progress: bool,
    /// Pod messages only: publish in batches of this many (`Publisher::send_many`).
    #[arg(long, default_value_t = 0)]
    batch: u64,
}

#[derive(Args)]
struct SubscribeArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Stop after this many messages (default: until `Disconnected`).
    #[arg(long)]
    count: Option<u64>,
    /// Per-receive timeout; 0 uses the blocking `recv()`.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Pause after every message (a slow subscriber).
    #[arg(long, default_value_t = 0)]
    sleep_us: u64,
    /// Print `first seq=..` on the first message.
    #[arg(long)]
    announce_first: bool,
    /// Pod messages only: receive in batches of up to this many, copied out
    /// (`Subscriber::recv_each`, no slot held), instead of one held sample at a time.
    #[arg(long, default_value_t = 0)]
    batch: usize,
}

#[derive(Args)]
struct HoldArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Samples to take and keep (0: never receive, a stalled subscriber).
    #[arg(long, default_value_t = 0)]
    hold: usize,
}

#[derive(Args)]
struct MutexArgs {
    #[arg(long)]
    name: String,
}

#[derive(Args)]
struct LockArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// After `OwnerDied`: reset the value and mark the mutex consistent before unlocking.
    #[arg(long)]
    repair: bool,
}

#[derive(Args)]
struct WaitArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Args)]
struct PostArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 1)]
    count: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Auto,
    Manual,
}

#[derive(Args)]
struct EventWaitArgs {
    #[command(flatten)]
    wait: WaitArgs,
    /// Open (or create) an event of this mode: an event of the other mode is an error. Without
    /// it, open the existing event whatever its mode.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
}

#[derive(Args)]
struct BytesArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 10)]
    count: u64,
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Args)]
struct EventSetArgs {
    #[arg(long)]
    name: String,
    /// Reset instead of set.
    #[arg(long)]
    reset: bool,
}

#[derive(Args)]
struct OpenArgs {
    #[command(flatten)]
    topic: TopicArgs,
    /// Join as a publisher instead of a subscriber.
    #[arg(long)]
    publisher: bool,
    /// After joining, keep the topic open until killed.
    #[arg(long)]
    hold: bool,
}

/// A failure: printed as `error code=<code> msg=<text>`.
struct Fail(String, String);

impl Fail {
    fn new(code: &str, msg: impl std::fmt::Display) -> Fail {
        Fail(code.to_owned(), msg.to_string())
    }
}

impl From<shmbus::OpenError> for Fail {
    fn from(e: shmbus::OpenError) -> Fail {
        Fail::new(open_error_code(&e), e)
    }
}

fn publish_code(f: &PublishFailure) -> &'static str {
    match f {
        PublishFailure::Timeout => "timeout",
        PublishFailure::Lock(_) => "lock",
        PublishFailure::UsedAfterFork(_) => "used-after-fork",
        _ => "send",
    }
}

fn send_error<T>(e: &SendError<T>) -> Fail {
    let code = match e.reason() {
        SendFailure::Publish(p) => publish_code(p),
        SendFailure::TooLarge { .. } => "too-large",
        SendFailure::Encode { .. } => "encode",
        SendFailure::NoSlot => "pool-exhausted",
        _ => "send",
    };
    Fail::new(code, e)
}

fn publish_error<T>(e: &PublishError<T>) -> Fail {
    Fail::new(publish_code(e.reason()), e)
}

fn loan_error(e: LoanError) -> Fail {
    let code = match e {
        LoanError::PoolExhausted(_) => "pool-exhausted",
        LoanError::AlreadyLoaned => "already-loaned",
        LoanError::UsedAfterFork(_) => "used-after-fork",
    };
    Fail::new(code, e)
}

fn recv_code(e: &RecvError) -> &'static str {
    match e {
        RecvError::Empty => "empty",
        RecvError::Timeout => "timeout",
        RecvError::Lagged(_) => "lagged",
        RecvError::Disconnected => "disconnected",
        RecvError::TooManyHeld(_) => "too-many-held",
        RecvError::Corrupt(_) => "recv-corrupt",
        RecvError::Decode(_) => "decode",
        _ => "recv",
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Dies with the test process, so that a test killed by its runner leaves no peer behind.
fn tie_to_parent() {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // The parent may have died before the line above.
    if let Some(expected) = std::env::var("SHMBUS_TEST_PARENT")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        // 0: the parent is outside our PID namespace (we are its first process, forked by
        // `unshare --pid --fork`); it cannot be compared, and the death signal still holds.
        if parent != 0 && parent != expected {
            std::process::exit(3);
        }
    }
}

enum Pub {
    Pod(Publisher<Msg>),
    Compact(Publisher<CompactMsg>),
    Serde(SerdePublisher<Rec>),
}

impl Pub {
    fn join(args: &TopicArgs) -> Result<Pub, Fail> {
        let t = args.builder();
        Ok(match args.msg_type {
            MsgType::Msg => Pub::Pod(t.publisher::<Msg>()?),
            MsgType::Compact => Pub::Compact(t.publisher::<CompactMsg>()?),
            MsgType::Rec => Pub::Serde(t.serde_publisher::<Rec>()?),
            MsgType::Other | MsgType::Small => {
                return Err(Fail::new("usage", "publish supports msg and rec"))
            }
        })
    }

    /// Publishes message `index`: even ones with `send`, odd ones written in place via `loan`.
    fn send(&mut self, producer: u64, index: u64) -> Result<u64, Fail> {
        match self {
            Pub::Pod(p) if index % 2 == 0 => p
                .send(Msg::new(producer, index))
                .map_err(|e| send_error(&e)),
            Pub::Pod(p) => {
                let mut loan = p.loan().map_err(loan_error)?;
                *loan = Msg::new(producer, index);
                loan.publish().map_err(|e| publish_error(&e))
            }
            Pub::Compact(p) => p
                .send(CompactMsg::new(producer, index))
                .map_err(|e| send_error(&e)),
            Pub::Serde(p) => p
                .send(Rec::new(producer, index))
                .map_err(|e| send_error(&e)),
        }
    }
}

fn publish(a: &PublishArgs) -> Result<(), Fail> {
    let mut p = Pub::join(&a.topic)?;
    let producer = u64::from(std::process::id());
    println!("ready producer={producer}");
    let mut index = 0;
    let mut last_seq = None;
    while a.forever || index < a.count {
        let n = if a.forever {
            a.batch
        } else {
            a.batch.min(a.count - index)
        };
        let many_error = |e: &dyn std::fmt::Display, sent: usize| {
            Fail::new("send-many", format!("after {sent}: {e}"))
        };
        let sent = match (&mut p, a.batch > 0) {
            (Pub::Pod(pp), true) => {
                let batch: Vec<Msg> = (index..index + n).map(|i| Msg::new(producer, i)).collect();
                Some(
                    pp.send_many(&batch)
                        .map_err(|e| many_error(&e, *e.value()))?,
                )
            }
            (Pub::Compact(pp), true) => {
                let batch: Vec<CompactMsg> = (index..index + n)
                    .map(|i| CompactMsg::new(producer, i))
                    .collect();
                Some(
                    pp.send_many(&batch)
                        .map_err(|e| many_error(&e, *e.value()))?,
                )
            }
            _ => None,
        };
        if let Some(first) = sent {
            index += n;
            last_seq = Some(first + n - 1);
            continue;
        }
        let seq = p
            .send(producer, index)
            .map_err(|Fail(c, m)| Fail(c, format!("message {index}: {m}")))?;
        if a.progress {
            println!("sent index={index} seq={seq}");
        }
        last_seq = Some(seq);
        index += 1;
        if a.interval_us > 0 {
            std::thread::sleep(Duration::from_micros(a.interval_us));
        }
    }
    println!(
        "done sent={index} last_seq={}",
        last_seq.map_or("none".to_owned(), |s| s.to_string())
    );
    if a.hold {
        sleep_forever();
    }
    Ok(())
}

fn pub_repl(a: &TopicArgs) -> Result<(), Fail> {
    let mut p = Pub::join(a)?;
    let producer = u64::from(std::process::id());
    println!("ready producer={producer}");
    let mut index = 0;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["send", n] => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| Fail::new("usage", format!("bad count {n}")))?;
                let mut last = None;
                for _ in 0..n {
                    last = Some(p.send(producer, index)?);
                    index += 1;
                }
                println!(
                    "sent total={index} last_seq={}",
                    last.map_or("none".to_owned(), |s| s.to_string())
                );
            }
            ["quit"] => break,
            _ => return Err(Fail::new("usage", format!("unknown command {line:?}"))),
        }
    }
    drop(p);
    println!("bye");
    Ok(())
}

/// What a subscriber saw, checked message by message.
#[derive(Default)]
struct Tally {
    received: u64,
    lagged: u64,
    lag_events: u64,
    received_after_lag: u64,
    bad_checksum: u64,
    /// Messages whose sequence number is below the one expected (a repeat or going back).
    bad_order: u64,
    /// Sequence numbers skipped without being reported as lag (lost with a dead publisher).
    gaps: u64,
    /// Messages whose publisher index does not follow that publisher's previous one (when no
    /// lag happened in between).
    bad_index: u64,
    /// Sequence number where the accounting starts (first message minus lag before it).
    base: Option<u64>,
    /// Sequence number expected next.
    next: Option<u64>,
    pending_lag: u64,
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    /// Per publisher: its last index, and `lag_events` when it was received.
    producers: std::collections::HashMap<u64, (u64, u64)>,
}

impl Tally {
    fn message(&mut self, seq: u64, producer: u64, index: u64, intact: bool) {
        self.received += 1;
        if self.lag_events > 0 {
            self.received_after_lag += 1;
        }
        if !intact {
            self.bad_checksum += 1;
        }
        match self.next {
            Some(e) if seq < e => self.bad_order += 1,
            Some(e) => self.gaps += seq - e,
            None => self.base = Some(seq.wrapping_sub(self.pending_lag)),
        }
        self.next = Some(seq + 1);
        if let Some(&(last, lags)) = self.producers.get(&producer) {
            let ok = if lags == self.lag_events {
                index == last + 1
            } else {
                index > last
            };
            if !ok {
                self.bad_index += 1;
            }
        }
        self.producers.insert(producer, (index, self.lag_events));
        self.first.get_or_insert((seq, index));
        self.last = Some((seq, index));
    }

    fn lag(&mut self, n: u64) {
        self.lagged += n;
        self.lag_events += 1;
        match &mut self.next {
            Some(e) => *e += n,
            None => self.pending_lag += n,
        }
    }

    fn print(&self, end: &str, lost: u64) {
        let opt = |o: Option<u64>| o.map_or("none".to_owned(), |v| v.to_string());
        println!(
            "summary received={} lagged={} lag_events={} after_lag={} bad_checksum={} bad_order={} gaps={} \
             bad_index={} producers={} lost={lost} base={} next={} first_seq={} first_index={} last_seq={} \
             last_index={} end={end}",
            self.received,
            self.lagged,
            self.lag_events,
            self.received_after_lag,
            self.bad_checksum,
            self.bad_order,
            self.gaps,
            self.bad_index,
            self.producers.len(),
            opt(self.base),
            opt(self.next),
            opt(self.first.map(|f| f.0)),
            opt(self.first.map(|f| f.1)),
            opt(self.last.map(|p| p.0)),
            opt(self.last.map(|p| p.1)),
        );
    }
}

enum Sub {
    Pod(Subscriber<Msg>),
    Compact(Subscriber<CompactMsg>),
    Serde(SerdeSubscriber<Rec>),
}

impl Sub {
    fn join(args: &TopicArgs) -> Result<Sub, Fail> {
        let t = args.builder();
        Ok(match args.msg_type {
            MsgType::Msg => Sub::Pod(t.subscriber::<Msg>()?),
            MsgType::Compact => Sub::Compact(t.subscriber::<CompactMsg>()?),
            MsgType::Rec => Sub::Serde(t.serde_subscriber::<Rec>()?),
            MsgType::Other | MsgType::Small => {
                return Err(Fail::new("usage", "subscribe supports msg and rec"))
            }
        })
    }

    /// Messages lost with publishers that died while publishing them (topic-wide).
    fn lost(&self) -> u64 {
        match self {
            Sub::Pod(s) => s.stats().lost,
            Sub::Compact(s) => s.stats().lost,
            Sub::Serde(s) => s.stats().lost,
        }
    }

    /// The next message as (seq, producer, index, intact).
    fn recv(&self, timeout: Option<Duration>) -> Result<(u64, u64, u64, bool), RecvError> {
        match self {
            Sub::Pod(s) => {
                let sample = match timeout {
                    None => s.recv()?,
                    Some(t) => s.recv_timeout(t)?,
                };
                Ok((
                    sample.seq(),
                    sample.producer,
                    sample.index,
                    sample.is_intact(),
                ))
            }
            Sub::Compact(s) => {
                let mut got = None;
                s.recv_each(1, timeout, |seq, m| got = Some((seq, m)))?;
                let (seq, m) = got.ok_or(RecvError::Timeout)?;
                Ok((seq, m.producer, m.index, m.is_intact()))
            }
            Sub::Serde(s) => {
                let (seq, r) =
                    s.recv_timeout_with_seq(timeout.unwrap_or(Duration::from_secs(3600)))?;
                Ok((seq, r.producer, r.index, r.is_intact()))
            }
        }
    }
}

fn subscribe(a: &SubscribeArgs) -> Result<(), Fail> {
    let sub = Sub::join(&a.topic)?;
    println!("ready");
    let timeout = (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms));
    let mut t = Tally::default();
    let end = loop {
        if a.count.is_some_and(|c| t.received >= c) {
            break "count";
        }
        let left = a
            .count
            .map_or(a.batch, |c| (c - t.received).min(a.batch as u64) as usize);
        let batched = match (&sub, a.batch > 0) {
            (Sub::Pod(pod), true) => Some(pod.recv_each(left, timeout, |seq, m| {
                t.message(seq, m.producer, m.index, m.is_intact());
            })),
            (Sub::Compact(pod), true) => Some(pod.recv_each(left, timeout, |seq, m| {
                t.message(seq, m.producer, m.index, m.is_intact());
            })),
            _ => None,
        };
        if let Some(r) = batched {
            match r {
                Ok(_) => {
                    if a.sleep_us > 0 {
                        std::thread::sleep(Duration::from_micros(a.sleep_us));
                    }
                }
                Err(RecvError::Lagged(n)) => t.lag(n),
                Err(RecvError::Disconnected) => break "disconnected",
                Err(e @ (RecvError::Timeout | RecvError::Empty)) => break recv_code(&e),
                Err(e) => {
                    t.print("error", sub.lost());
                    return Err(Fail::new(recv_code(&e), e));
                }
            }
            continue;
        }
        match sub.recv(timeout) {
            Ok((seq, producer, index, intact)) => {
                t.message(seq, producer, index, intact);
                if a.announce_first && t.received == 1 {
                    println!("first seq={seq}");
                }
                if a.sleep_us > 0 {
                    std::thread::sleep(Duration::from_micros(a.sleep_us));
                }
            }
            Err(RecvError::Lagged(n)) => t.lag(n),
            Err(RecvError::Disconnected) => break "disconnected",
            Err(e @ (RecvError::Timeout | RecvError::Empty)) => break recv_code(&e),
            Err(e) => {
                t.print("error", sub.lost());
                return Err(Fail::new(recv_code(&e), e));
            }
        }
    };
    t.print(end, sub.lost());
    Ok(())
}

fn hold(a: &HoldArgs) -> Result<(), Fail> {
    let sub = a.topic.builder().subscriber::<Msg>()?;
    println!("ready");
    let mut held = Vec::new();
    while held.len() < a.hold {
        match sub.recv_timeout(Duration::from_secs(5)) {
            Ok(s) => {
                if !s.is_intact() {
                    return Err(Fail::new("bad-checksum", format!("{s:?}")));
                }
                held.push(s);
            }
            Err(RecvError::Lagged(_)) => {}
            Err(e) => return Err(Fail::new(recv_code(&e), e)),
        }
    }
    let seqs: Vec<String> = held.iter().map(|s| s.seq().to_string()).collect();
    println!(
        "holding seqs={}",
        if seqs.is_empty() {
            "none".to_owned()
        } else {
            seqs.join(",")
        }
    );
    sleep_forever();
}

fn acquired_str(owner_died: bool) -> &'static str {
    if owner_died {
        "owner-died"
    } else {
        "clean"
    }
}

fn lock_error(e: &LockError) -> Fail {
    let code = match e {
        LockError::Timeout => "lock-timeout",
        LockError::NotRecoverable => "not-recoverable",
        LockError::Deadlock => "deadlock",
        LockError::Os(_) => "os",
    };
    Fail::new(code, e)
}

/// Value a holder writes while it holds the mutex: "work in progress".
const DIRTY: u64 = 0xD1D;

fn hold_lock(a: &MutexArgs) -> Result<(), Fail> {
    let m = Mutex::open_or_create(&a.name, 0u64)?;
    let mut guard = m
        .lock_timeout(Duration::from_secs(2))
        .map_err(|e| lock_error(&e))?;
    let before = *guard;
    *guard = DIRTY;
    println!(
        "locked created={} acquired={} value={before}",
        m.created(),
        acquired_str(guard.owner_died())
    );
    sleep_forever();
}

fn lock(a: &LockArgs) -> Result<(), Fail> {
    let m = Mutex::<u64>::open(&a.name)?;
    let mut guard = m
        .lock_timeout(Duration::from_millis(a.timeout_ms))
        .map_err(|e| lock_error(&e))?;
    let owner_died = guard.owner_died();
    println!(
        "acquired state={} value={}",
        acquired_str(owner_died),
        *guard
    );
    if owner_died && a.repair {
        *guard = 0;
        guard.mark_consistent();
        println!("repaired");
    }
    drop(guard);
    println!("unlocked");
    Ok(())
}

/// Prints `result outcome=<got|timeout> elapsed_ms=<ms>` for a wait that began at `start`.
fn print_result(got: bool, got_word: &str, start: Instant) {
    println!(
        "result outcome={} elapsed_ms={}",
        if got { got_word } else { "timeout" },
        start.elapsed().as_millis()
    );
}

fn sem_wait(a: &WaitArgs) -> Result<(), Fail> {
    let sem = Semaphore::open(&a.name)?;
    println!("ready value={}", sem.value());
    let start = Instant::now();
    let got = sem.wait_timeout(Duration::from_millis(a.timeout_ms));
    print_result(got, "acquired", start);
    Ok(())
}

fn sem_post(a: &PostArgs) -> Result<(), Fail> {
    let sem = Semaphore::open(&a.name)?;
    for _ in 0..a.count {
        sem.post().map_err(|e| Fail::new("overflow", e))?;
    }
    println!("posted count={}", a.count);
    Ok(())
}

fn mode_str(m: EventMode) -> &'static str {
    match m {
        EventMode::AutoReset => "auto",
        EventMode::ManualReset => "manual",
    }
}

fn event_wait(a: &EventWaitArgs) -> Result<(), Fail> {
    let event = match a.mode {
        None => Event::open(&a.wait.name)?,
        Some(m) => {
            let mode = match m {
                ModeArg::Auto => EventMode::AutoReset,
                ModeArg::Manual => EventMode::ManualReset,
            };
            Event::open_or_create(&a.wait.name, mode, false)?
        }
    };
    println!("ready mode={}", mode_str(event.mode()));
    let start = Instant::now();
    let got = event.wait_timeout(Duration::from_millis(a.wait.timeout_ms));
    print_result(got, "woken", start);
    Ok(())
}

/// Message `i` of the bytes roles: `i` bytes (so the first is empty), byte `j` = `(i * 31 + j) % 251`.
fn bytes_message(i: u64) -> Vec<u8> {
    (0..i).map(|j| ((i * 31 + j) % 251) as u8).collect()
}

fn bytes_pub(a: &BytesArgs) -> Result<(), Fail> {
    let mut p = Topic::builder(&a.topic).serde_publisher::<Vec<u8>>()?;
    println!("ready");
    for i in 0..a.count {
        p.send(bytes_message(i)).map_err(|e| send_error(&e))?;
    }
    println!("done sent={}", a.count);
    Ok(())
}

fn bytes_sub(a: &BytesArgs) -> Result<(), Fail> {
    let s = Topic::builder(&a.topic).serde_subscriber::<Vec<u8>>()?;
    println!("ready");
    let (mut ok, mut bad) = (0, 0);
    for i in 0..a.count {
        match s.recv_timeout(Duration::from_millis(a.timeout_ms)) {
            Ok(m) if m == bytes_message(i) => ok += 1,
            Ok(_) => bad += 1,
            Err(e) => return Err(Fail::new("recv", e)),
        }
    }
    println!("summary ok={ok} bad={bad}");
    Ok(())
}

fn event_set(a: &EventSetArgs) -> Result<(), Fail> {
    let event = Event::open(&a.name)?;
    if a.reset {
        event.reset();
        println!("reset");
    } else {
        event.set();
        println!("set");
    }
    Ok(())
}

fn open(a: &OpenArgs) -> Result<(), Fail> {
    let t = a.topic.builder();
    // Keep whatever was joined alive while holding.
    let joined: Box<dyn std::any::Any> = match (a.topic.msg_type, a.publisher) {
        (MsgType::Msg, false) => Box::new(t.subscriber::<Msg>()?),
        (MsgType::Msg, true) => Box::new(t.publisher::<Msg>()?),
        (MsgType::Rec, false) => Box::new(t.serde_subscriber::<Rec>()?),
        (MsgType::Rec, true) => Box::new(t.serde_publisher::<Rec>()?),
        (MsgType::Other, false) => Box::new(t.subscriber::<OtherMsg>()?),
        (MsgType::Other, true) => Box::new(t.publisher::<OtherMsg>()?),
        (MsgType::Small, false) => Box::new(t.subscriber::<SmallMsg>()?),
        (MsgType::Small, true) => Box::new(t.publisher::<SmallMsg>()?),
        (MsgType::Compact, false) => Box::new(t.subscriber::<CompactMsg>()?),
        (MsgType::Compact, true) => Box::new(t.publisher::<CompactMsg>()?),
    };
    println!("ok");
    if a.hold {
        sleep_forever();
    }
    drop(joined);
    Ok(())
}

fn gc(a: &GcArgs) -> Result<(), Fail> {
    let deadline = std::time::Instant::now() + Duration::from_millis(a.for_ms);
    let mut removed = Vec::new();
    let mut unreadable = 0u64;
    let mut rounds = 0u64;
    loop {
        let r = shmbus_core::segment::gc_report_prefix(&a.prefix, false)
            .map_err(|e| Fail::new("os", e))?;
        removed.extend(r.removed);
        for u in &r.unreadable {
            eprintln!("unreadable: {u:?}");
        }
        unreadable += r.unreadable.len() as u64;
        rounds += 1;
        if std::time::Instant::now() >= deadline {
            break;
        }
    }
    let list = if removed.is_empty() {
        "none".to_owned()
    } else {
        removed.join(",")
    };
    println!(
        "gc rounds={rounds} count={} unreadable={unreadable} removed={list}",
        removed.len()
    );
    Ok(())
}

fn churn(a: &ChurnArgs) -> Result<(), Fail> {
    let deadline = std::time::Instant::now() + Duration::from_millis(a.for_ms);
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    let topic = Topic::builder(&a.topic);
    while std::time::Instant::now() < deadline {
        match topic.publisher::<Msg>() {
            Ok(p) => {
                ok += 1;
                drop(p);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{} ({})", e, open_error_code(&e)));
            }
        }
    }
    println!(
        "churn ok={ok} errors={errors} msg={}",
        first_error.unwrap_or_else(|| "none".into())
    );
    Ok(())
}

/// Prints `result code=<created|error code> requested=<bytes> init=<ran|no> msg=<error>`; an
/// error is an outcome here, not a failure of the peer.
fn segment_create(a: &SegmentCreateArgs) -> Result<(), Fail> {
    use shmbus_core::layout::{Codec, TypeInfo};
    use shmbus_core::segment::{CreateOptions, Kind, Segment, SegmentError};
    let name = shmbus_core::name::Name::new(&a.name).map_err(|e| Fail::new("name", e))?;
    let ty =
        TypeInfo::new("bytes", 1, 1, Codec::Bytes).ok_or_else(|| Fail::new("type", "bytes"))?;
    let mut init_ran = false;
    let r = Segment::create(&name, &CreateOptions::new(Kind::Value, ty, a.size), |_| {
        init_ran = true;
    });
    let init = if init_ran { "ran" } else { "no" };
    match r {
        Ok(seg) => {
            println!(
                "result code=created requested={} init={init} msg=ok",
                a.size
            );
            drop(seg);
        }
        Err(e) => {
            let requested = match &e {
                SegmentError::OutOfSpace { requested, .. } => requested.to_string(),
                _ => "none".to_owned(),
            };
            println!(
                "result code={} requested={requested} init={init} msg={e}",
                shmbus_tests::segment_error_code(&e)
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tie_to_parent();
    let cli = Cli::parse();
    let r = match &cli.role {
        Role::Publish(a) => publish(a),
        Role::PubRepl(a) => pub_repl(a),
        Role::Subscribe(a) => subscribe(a),
        Role::Hold(a) => hold(a),
        Role::HoldLock(a) => hold_lock(a),
        Role::Lock(a) => lock(a),
        Role::SemWait(a) => sem_wait(a),
        Role::SemPost(a) => sem_post(a),
        Role::EventWait(a) => event_wait(a),
        Role::EventSet(a) => event_set(a),
        Role::BytesPub(a) => bytes_pub(a),
        Role::BytesSub(a) => bytes_sub(a),
        Role::Open(a) => open(a),
        Role::Idle => {
            println!("ready");
            sleep_forever();
        }
        Role::Gc(a) => gc(a),
        Role::Churn(a) => churn(a),
        Role::SegmentCreate(a) => segment_create(a),
        Role::FramesPub(a) => arrays::frames_pub(a),
        Role::FramesSub(a) => arrays::frames_sub(a),
        Role::FramesHold(a) => arrays::frames_hold(a),
        Role::FramesForge(a) => arrays::frames_forge(a),
        Role::ArrayCreate(a) => arrays::array_create(a),
        Role::ArrayAttach(a) => arrays::array_attach(a),
        Role::Fork(a) => fork::fork(a),
        Role::ForkAsync(a) => fork::fork_async(a),
        Role::IdentLayouts => identity::ident_layouts(),
        Role::IdentOpen(a) => identity::ident_open(a),
        Role::HTopic(a) => hostile::h_topic(a),
        Role::HFrames(a) => hostile::h_frames(a),
        Role::HMutex(a) => hostile::h_mutex(a),
        Role::HSem(a) => hostile::h_sem(a),
        Role::HEvent(a) => hostile::h_event(a),
        Role::HArray(a) => hostile::h_array(a),
        Role::HOpen(a) => hostile::h_open(a),
        Role::HScribble(a) => hostile::h_scribble(a),
        Role::HHold(a) => hostile::h_hold(a),
        Role::HExec(a) => hostile::h_exec(a),
        Role::QueuePut(a) => queue::queue_put(a),
        Role::QueuePutBytes(a) => queue::queue_put_bytes(a),
        Role::QueueGet(a) => queue::queue_get(a),
        Role::ArrayQueuePut(a) => queue::array_queue_put(a),
        Role::ArrayQueueGet(a) => queue::array_queue_get(a),
        Role::ValueAdd(a) => values::value_add(a),
        Role::ValueScribble(a) => values::value_scribble(a),
        Role::BarrierWait(a) => values::barrier_wait(a),
        Role::SharedUpdate(a) => values::shared_update(a),
        Role::SmallShm(a) => pressure::small_shm(a),
        Role::FewInodes(a) => pressure::few_inodes(a),
        Role::HoldObjects(a) => stale::hold_objects(a),
        Role::PidReuse(a) => stale::pid_reuse(a),
        Role::GcRaceUser(a) => stale::gc_race_user(a),
        Role::GcCliLoop(a) => stale::gc_cli_loop(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            println!("error code={code} msg={msg}");
            ExitCode::from(2)
        }
    }
}

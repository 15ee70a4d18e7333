//! Peer roles for stale cleanup under pressure: holders of one object of each kind, pid reuse
//! forced in a PID namespace of our own, and `gc` racing creators and openers.
//!
//! Liveness in shmbus is by lease (file locks the kernel drops when a process dies), never by
//! pid: these roles give a pid to another process on purpose and report what happens.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use shmbus::{
    Barrier, BarrierOpenError, LockError, Mutex, OpenError, QueueBuilder, QueueOpenError, Shared,
    SharedArray, Topic, TopicError, Value,
};
use shmbus_core::layout::{Codec, TypeInfo};
use shmbus_core::name::{Name, FILE_PREFIX};
use shmbus_core::segment::{self, Expect, Kind, Segment, SegmentError, SHM_DIR};
use shmbus_tests::{open_error_code, segment_error_code, Line, Msg, Tally};

use super::Fail;

/// The objects of one prefix: a topic, a work queue, a mutex, a barrier, a value, an array.
const OBJECTS: [&str; 6] = ["topic", "queue", "mutex", "barrier", "value", "array"];

fn object(prefix: &str, what: &str) -> String {
    format!("{prefix}.{what}")
}

/// The files in the shared-memory directory whose shmbus name starts with `prefix`, sorted.
fn files_under(prefix: &str) -> Vec<String> {
    let lead = format!("{FILE_PREFIX}{prefix}");
    let mut v: Vec<String> = std::fs::read_dir(SHM_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&lead))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(",")
    }
}

/// A code for an open error, naming the "full" cases of queues and barriers.
fn open_code(e: &OpenError) -> &'static str {
    match e {
        OpenError::Queue(QueueOpenError::TooManyParticipants { .. }) => "too-many-participants",
        OpenError::Barrier(BarrierOpenError::Full { .. }) => "barrier-full",
        OpenError::Topic(TopicError::TooManyPublishers { .. }) => "too-many-publishers",
        e => open_error_code(e),
    }
}

fn lock_code(e: &LockError) -> &'static str {
    match e {
        LockError::Timeout => "timeout",
        LockError::NotRecoverable => "not-recoverable",
        LockError::Deadlock => "deadlock",
        LockError::Os(_) => "os",
    }
}

// ---------------------------------------------------------------------------------------------
// Holders
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Part {
    /// Creates the objects: the topic's only publisher, a queue row, the mutex (locked), a
    /// barrier party, the value, the array.
    Owner,
    /// Joins them: a subscriber, a queue row, the other barrier party, the value, the array.
    Joiner,
}

#[derive(Args)]
pub(crate) struct HoldObjectsArgs {
    /// Prefix of the objects (`<prefix>.topic`, `.queue`, ...); repeat for more sets.
    #[arg(long = "prefix", required = true)]
    prefixes: Vec<String>,
    #[arg(long = "as", value_enum, default_value_t = Part::Owner)]
    part: Part,
}

/// The topic of a set: one publisher, up to four subscribers.
fn set_topic(prefix: &str) -> Topic {
    Topic::builder(&object(prefix, "topic"))
        .max_publishers(1)
        .max_subscribers(4)
}

/// The queue of a set: two participant rows.
fn set_queue(prefix: &str) -> QueueBuilder {
    QueueBuilder::new(&object(prefix, "queue"))
        .capacity(8)
        .max_participants(2)
}

/// Holds one object of each kind per prefix until killed. An owner also takes `check` (use
/// every object, print `checked`) and `quit` on stdin.
pub(crate) fn hold_objects(a: &HoldObjectsArgs) -> Result<(), Fail> {
    let pid = std::process::id();
    match a.part {
        Part::Owner => {
            let mut publishers = Vec::new();
            let mut queues = Vec::new();
            let mut mutexes = Vec::new();
            let mut barriers = Vec::new();
            let mut values = Vec::new();
            let mut arrays = Vec::new();
            for p in &a.prefixes {
                publishers.push(set_topic(p).publisher::<Msg>()?);
                queues.push(set_queue(p).open::<u64>()?);
                mutexes.push(Mutex::open_or_create(&object(p, "mutex"), 0u64)?);
                barriers.push(Barrier::open(&object(p, "barrier"), 2)?);
                values.push(Value::open_or_create(&object(p, "value"), 0u64)?);
                arrays.push(
                    SharedArray::<u64>::options()
                        .scoped()
                        .create(&object(p, "array"), &[64])
                        .map_err(|e| Fail::new("array", e))?,
                );
            }
            let mut guards = Vec::new();
            for m in &mutexes {
                let mut g = m
                    .lock_timeout(Duration::from_secs(2))
                    .map_err(|e| Fail::new(lock_code(&e), e))?;
                *g = u64::from(pid);
                guards.push(g);
            }
            println!("holding pid={pid} as=owner sets={}", a.prefixes.len());
            let mut round = 0u64;
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "check" => {
                        round += 1;
                        for p in &mut publishers {
                            p.send(Msg::new(u64::from(pid), round))
                                .map_err(|e| Fail::new("send", e.reason()))?;
                        }
                        for q in &queues {
                            q.put(u64::from(pid) * 1000 + round)
                                .map_err(|e| Fail::new("put", e))?;
                        }
                        for v in &values {
                            v.fetch_add(1);
                        }
                        for g in &mut guards {
                            **g = round;
                        }
                        for a in &arrays {
                            a.set(0, round).map_err(|e| Fail::new("array", e))?;
                        }
                        println!("checked round={round}");
                    }
                    "quit" => return Ok(()),
                    _ => {}
                }
            }
            Ok(())
        }
        Part::Joiner => {
            let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
            for p in &a.prefixes {
                held.push(Box::new(set_topic(p).subscriber::<Msg>()?));
                held.push(Box::new(set_queue(p).existing().open::<u64>()?));
                held.push(Box::new(Barrier::open(&object(p, "barrier"), 2)?));
                held.push(Box::new(Value::<u64>::open(&object(p, "value"))?));
                held.push(Box::new(
                    SharedArray::<u64>::attach(&object(p, "array"))
                        .map_err(|e| Fail::new("array", e))?,
                ));
            }
            println!("holding pid={pid} as=joiner sets={}", a.prefixes.len());
            super::sleep_forever();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Children of a role (the PID-namespace roles start their own processes)
// ---------------------------------------------------------------------------------------------

/// A peer process this role started: its stdout lines, its stdin; killed and reaped on drop.
struct Kid {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Kid {
    /// Starts this binary with `args`. The reader thread is started after the process, so the
    /// process takes the next pid (see [`force_pid`]).
    fn spawn(label: &str, args: &[&str]) -> Result<Kid, Fail> {
        let mut child = Command::new("/proc/self/exe")
            .args(args)
            .env("SHMBUS_TEST_PARENT", std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Fail::new("spawn", format!("{label}: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Kid {
            label: label.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line tagged `tag` (bounded); an `error` line or the end of output fails.
    fn expect(&mut self, tag: &str, timeout: Duration) -> Result<Line, Fail> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(raw) => {
                    let l = Line::parse(&raw);
                    if l.tag == tag {
                        return Ok(l);
                    }
                    if l.tag == "error" {
                        return Err(Fail::new("kid", format!("{}: {raw}", self.label)));
                    }
                }
                Err(_) => {
                    return Err(Fail::new(
                        "kid",
                        format!("{}: no {tag:?} line within {timeout:?}", self.label),
                    ))
                }
            }
        }
    }

    fn send(&mut self, cmd: &str) -> Result<(), Fail> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Fail::new("kid", "no stdin"))?;
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .map_err(|e| Fail::new("kid", format!("{}: {e}", self.label)))
    }

    /// Whether it has not exited (not reaped: it is our child, so no other process can have
    /// its pid meanwhile).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Waits (bounded) for it to exit on its own.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, Fail> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Fail::new("kid", format!("{} did not exit", self.label)));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.stdin.take();
        self.kill();
    }
}

const STEP: Duration = Duration::from_secs(5);

/// Starts an idle process that gets pid `target`: the next pid of this PID namespace is set
/// through `/proc/sys/kernel/ns_last_pid` (root of the namespace's owner only). Returns it and
/// the attempts it took (another fork may take the pid between the write and ours).
fn force_pid(target: u32) -> Result<(Kid, u32), Fail> {
    for attempt in 1..=10 {
        std::fs::write(
            "/proc/sys/kernel/ns_last_pid",
            (target.saturating_sub(1)).to_string(),
        )
        .map_err(|e| Fail::new("ns-last-pid", e))?;
        let mut kid = Kid::spawn("pid taker", &["idle"])?;
        if kid.pid() == target {
            kid.expect("ready", STEP)?;
            return Ok((kid, attempt));
        }
    }
    Err(Fail::new(
        "pid-not-reused",
        format!("no process got pid {target} in 10 attempts"),
    ))
}

/// Exits when stdin ends (the test died or dropped this process): as PID 1 of its namespace,
/// this takes every process of the namespace with it. Returns the lines read meanwhile.
fn watch_stdin() -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        std::process::exit(4);
    });
    rx
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// The creator of a set of objects is killed; a new process gets its pid; `gc` (first
    /// set) and opening (second set) still reclaim everything.
    DeadCreator,
    /// A live owner and a joiner that is killed; a new, unrelated process gets the joiner's
    /// pid; only the joiner's rows are reclaimed, nothing of the owner's is released.
    LiveParticipant,
}

#[derive(Args)]
pub(crate) struct PidReuseArgs {
    #[arg(long)]
    prefix: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
}

/// Runs as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`): starts the
/// holders, kills them, gives their pids to new processes, and reports every step.
pub(crate) fn pid_reuse(a: &PidReuseArgs) -> Result<(), Fail> {
    let me = std::process::id();
    if me != 1 {
        return Err(Fail::new(
            "not-pid-1",
            format!("pid {me}: run in a new PID namespace"),
        ));
    }
    let commands = watch_stdin();
    println!("ns pid={me}");
    match a.scenario {
        Scenario::DeadCreator => dead_creator(&a.prefix),
        Scenario::LiveParticipant => live_participant(&a.prefix, &commands),
    }
}

fn peek_line(round: &str, p: &str) {
    for what in OBJECTS {
        let name = object(p, what);
        match Name::new(&name)
            .map_err(|e| e.to_string())
            .and_then(|n| segment::peek(&n).map_err(|e| e.to_string()))
        {
            Ok(info) => println!(
                "peek round={round} kind={what} in_use={} creator_pid={}",
                info.in_use, info.creator_pid
            ),
            Err(e) => {
                println!("peek round={round} kind={what} in_use=unknown creator_pid=0 msg={e}")
            }
        }
    }
}

fn dead_creator(prefix: &str) -> Result<(), Fail> {
    let mut takers = Vec::new();
    for round in ["gc", "open"] {
        let p = format!("{prefix}.{round}");
        let mut creator = Kid::spawn("creator", &["hold-objects", "--prefix", &p])?;
        creator.expect("holding", STEP)?;
        let dead = creator.pid();
        let status = creator.kill();
        drop(creator);
        println!(
            "killed round={round} pid={dead} signal={}",
            status
                .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s))
                .unwrap_or(0)
        );
        println!("files round={round} names={}", list(&files_under(&p)));
        let (mut taker, tries) = force_pid(dead)?;
        println!(
            "reused round={round} pid={dead} taker={} tries={tries}",
            taker.pid()
        );
        peek_line(round, &p);
        println!("taker round={round} alive={}", taker.alive());
        if round == "gc" {
            let removed = segment::gc().map_err(|e| Fail::new("gc", e))?;
            let expected: Vec<String> = OBJECTS
                .iter()
                .map(|w| format!("{FILE_PREFIX}{}", object(&p, w)))
                .collect();
            let all = expected.iter().all(|f| removed.contains(f));
            println!("gc round={round} removed={} all={all}", removed.len());
        } else {
            let topic = set_topic(&p).publisher::<Msg>()?;
            println!(
                "open round={round} kind=topic outcome=created created={}",
                topic.created_topic()
            );
            let queue = set_queue(&p).open::<u64>()?;
            println!(
                "open round={round} kind=queue outcome=created created={}",
                queue.created()
            );
            let barrier = Barrier::open(&object(&p, "barrier"), 2)?;
            println!(
                "open round={round} kind=barrier outcome=created created={}",
                barrier.generation() == 0 && barrier.arrived() == 0
            );
            let code = |r: Result<(), OpenError>| r.err().map_or("opened", |e| open_code(&e));
            println!(
                "open round={round} kind=mutex outcome={}",
                code(Mutex::<u64>::open(&object(&p, "mutex")).map(drop))
            );
            println!(
                "open round={round} kind=value outcome={}",
                code(Value::<u64>::open(&object(&p, "value")).map(drop))
            );
            let array = match SharedArray::<u64>::attach(&object(&p, "array")) {
                Ok(_) => "opened",
                Err(shmbus::ArrayError::Segment(SegmentError::NotFound(_))) => "not-found",
                Err(_) => "other",
            };
            println!("open round={round} kind=array outcome={array}");
            drop((topic, queue, barrier));
        }
        println!("left round={round} names={}", list(&files_under(&p)));
        takers.push(taker);
    }
    let alive = takers.iter_mut().all(Kid::alive);
    println!(
        "done takers_alive={alive} left={}",
        list(&files_under(prefix))
    );
    Ok(())
}

/// The checks that a live owner's objects are still the owner's: its publisher row, its
/// queue row, its lock, its barrier party. `when` labels the line.
fn owner_kept(p: &str, when: &str) -> Result<(), Fail> {
    let second = set_topic(p).publisher::<Msg>();
    let publisher = second.err().map_or("joined", |e| open_code(&e));
    let m = Mutex::<u64>::open(&object(p, "mutex"))?;
    let mutex = match m.lock_timeout(Duration::from_millis(200)) {
        Ok(g) if g.owner_died() => "owner-died",
        Ok(_) => "acquired",
        Err(e) => lock_code(&e),
    };
    let in_use = OBJECTS.iter().all(|w| {
        Name::new(&object(p, w))
            .ok()
            .and_then(|n| segment::peek(&n).ok())
            .is_some_and(|i| i.in_use)
    });
    println!("kept when={when} second_publisher={publisher} mutex={mutex} in_use={in_use}");
    Ok(())
}

fn live_participant(p: &str, commands: &Receiver<String>) -> Result<(), Fail> {
    let mut owner = Kid::spawn("owner", &["hold-objects", "--prefix", p])?;
    let o = owner.expect("holding", STEP)?;
    let owner_pid = o.num("pid");
    let mut joiner = Kid::spawn("joiner", &["hold-objects", "--prefix", p, "--as", "joiner"])?;
    joiner.expect("holding", STEP)?;
    let dead = joiner.pid();
    joiner.kill();
    drop(joiner);
    println!("killed pid={dead} owner={owner_pid}");
    let (mut taker, tries) = force_pid(dead)?;
    println!("reused pid={dead} taker={} tries={tries}", taker.pid());

    // The test runs gc from outside this PID namespace, where these pids mean nothing.
    println!("live-ready");
    match commands.recv_timeout(Duration::from_secs(20)) {
        Ok(c) if c.trim() == "continue" => {}
        other => {
            return Err(Fail::new(
                "protocol",
                format!("{other:?} instead of continue"),
            ))
        }
    }

    let removed = segment::gc().map_err(|e| Fail::new("gc", e))?;
    println!("gc removed={}", removed.len());
    owner_kept(p, "taker-alive")?;

    // The dead joiner's rows are reclaimed by the next participants; the owner's are kept.
    let sub = set_topic(p).subscriber::<Msg>()?;
    let st = sub.stats();
    println!(
        "topic publishers={} subscribers={}",
        st.publishers, st.subscribers
    );
    let queue = set_queue(p).existing().open::<u64>()?;
    let third = set_queue(p).existing().open::<u64>();
    println!(
        "queue joined=true third={}",
        third.err().map_or("joined", |e| open_code(&e))
    );
    let barrier = Barrier::open(&object(p, "barrier"), 2)?;
    let third = Barrier::open(&object(p, "barrier"), 2);
    println!(
        "barrier joined=true third={}",
        third.err().map_or("joined", |e| open_code(&e))
    );

    // The owner still works, and this process sees what it does.
    owner.send("check")?;
    owner.expect("checked", STEP)?;
    let m = sub.recv_timeout(STEP).map_err(|e| Fail::new("recv", e))?;
    let item = queue.get_timeout(STEP).map_err(|e| Fail::new("get", e))?;
    let value = Value::<u64>::open(&object(p, "value"))?
        .load()
        .map_err(|e| Fail::new("value", e))?;
    println!(
        "owner-works producer={} intact={} item={item} value={value}",
        m.producer,
        m.is_intact()
    );
    drop(m);

    // The unrelated process with the dead joiner's pid goes too: still nothing of the owner's
    // is released.
    taker.kill();
    drop(taker);
    owner_kept(p, "taker-dead")?;

    owner.send("quit")?;
    let status = owner.wait(STEP)?;
    drop((sub, queue, barrier));
    println!(
        "done owner_exit={} left={}",
        status.code().map_or(-1, i64::from),
        list(&files_under(p))
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gc racing creators and openers
// ---------------------------------------------------------------------------------------------

#[derive(Args)]
pub(crate) struct GcRaceArgs {
    /// Prefix of every name.
    #[arg(long)]
    prefix: String,
    /// This worker's number (its own names are `<prefix>.w<N>.*`).
    #[arg(long)]
    worker: u32,
    /// Workers in all: each also opens the names of the next one.
    #[arg(long)]
    workers: u32,
    #[arg(long, default_value_t = 2000)]
    for_ms: u64,
}

/// The kinds a worker goes through, one per round.
const RACE_KINDS: [&str; 6] = ["topic", "queue", "mutex", "value", "array", "shared"];

/// What a worker counted.
#[derive(Default)]
struct RaceTally {
    iterations: u64,
    created: u64,
    /// Rounds that found a file left under the name (a leaver that raced with a probe leaves
    /// it; the next opener or gc reclaims it).
    stale: u64,
    /// An open of a name this process held failed, or reached another segment: a live
    /// segment was removed.
    violations: u64,
    /// Opens of the other worker's names.
    other_ok: u64,
    other_not_found: u64,
    other_errors: u64,
    first: Option<String>,
}

impl RaceTally {
    fn violation(&mut self, what: String) {
        self.violations += 1;
        self.first.get_or_insert(what);
    }
}

/// One round of kind `kind` on `name`: open or create it (handle A), open it again without
/// creating (handle B: it must be A's segment, since A holds it), write through A, read through
/// B, drop both.
fn race_round(kind: usize, name: &str, i: u64, t: &mut RaceTally) {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {name}: {e}");
    match RACE_KINDS[kind] {
        "topic" => {
            let topic = Topic::builder(name).max_publishers(2).max_subscribers(2);
            let mut a = match topic.publisher::<Msg>() {
                Ok(a) => a,
                Err(e) => return t.violation(fail("create", &e)),
            };
            t.created += u64::from(a.created_topic());
            let b = match topic.subscriber::<Msg>() {
                Ok(b) => b,
                Err(e) => return t.violation(fail("open", &e)),
            };
            // A subscriber of a new topic (the old one removed under A) would see no publisher.
            if b.stats().publishers != 1 {
                return t.violation(format!("{name}: the subscriber sees no publisher"));
            }
            if let Err(e) = a.send(Msg::new(7, i)) {
                return t.violation(fail("send", &e));
            }
            let got = match b.recv_timeout(Duration::from_secs(2)) {
                Ok(m) if m.index == i && m.is_intact() => None,
                Ok(m) => Some(format!("{name}: got {:?}", *m)),
                Err(e) => Some(fail("recv", &e)),
            };
            if let Some(v) = got {
                t.violation(v);
            }
        }
        "queue" => {
            let a = match QueueBuilder::new(name).capacity(4).open::<u64>() {
                Ok(a) => a,
                Err(e) => return t.violation(fail("create", &e)),
            };
            t.created += u64::from(a.created());
            let b = match QueueBuilder::new(name).existing().open::<u64>() {
                Ok(b) => b,
                Err(e) => return t.violation(fail("open", &e)),
            };
            if let Err(e) = a.put(i) {
                return t.violation(fail("put", &e));
            }
            match b.try_get() {
                Ok(v) if v == i => {}
                Ok(v) => t.violation(format!("{name}: got {v}, put {i}")),
                Err(e) => t.violation(fail("get", &e)),
            }
        }
        "mutex" => {
            let a = match Mutex::open_or_create(name, 0u64) {
                Ok(a) => a,
                Err(e) => return t.violation(fail("create", &e)),
            };
            t.created += u64::from(a.created());
            let b = match Mutex::<u64>::open(name) {
                Ok(b) => b,
                Err(e) => return t.violation(fail("open", &e)),
            };
            match a.lock_timeout(Duration::from_secs(2)) {
                Ok(mut g) => *g = i,
                Err(e) => return t.violation(fail("lock", &e)),
            }
            let read = match b.lock_timeout(Duration::from_secs(2)) {
                Ok(g) if *g == i => None,
                Ok(g) => Some(format!("{name}: read {}, wrote {i}", *g)),
                Err(e) => Some(fail("lock", &e)),
            };
            if let Some(v) = read {
                t.violation(v);
            }
        }
        "value" => {
            let a = match Value::open_or_create(name, 0u64) {
                Ok(a) => a,
                Err(e) => return t.violation(fail("create", &e)),
            };
            let b = match Value::<u64>::open(name) {
                Ok(b) => b,
                Err(e) => return t.violation(fail("open", &e)),
            };
            if let Err(e) = a.store(i) {
                return t.violation(fail("store", &e));
            }
            match b.load() {
                Ok(v) if v == i => {}
                Ok(v) => t.violation(format!("{name}: read {v}, stored {i}")),
                Err(e) => t.violation(fail("load", &e)),
            }
        }
        "array" => {
            let a = match SharedArray::<u64>::options().scoped().create(name, &[16]) {
                Ok(a) => {
                    t.created += 1;
                    a
                }
                // No round of this worker holds it now: only a file left stale by a leaver
                // that raced with a probe can be there. Attaching reclaims it (not found) or
                // joins it.
                Err(shmbus::ArrayError::Segment(SegmentError::AlreadyExists(_))) => {
                    t.stale += 1;
                    match SharedArray::<u64>::attach(name) {
                        Ok(a) => a,
                        Err(shmbus::ArrayError::Segment(SegmentError::NotFound(_))) => return,
                        Err(e) => return t.violation(fail("attach", &e)),
                    }
                }
                Err(e) => return t.violation(fail("create", &e)),
            };
            let b = match SharedArray::<u64>::attach(name) {
                Ok(b) => b,
                Err(e) => return t.violation(fail("open", &e)),
            };
            if let Err(e) = a.set(3, i) {
                return t.violation(fail("set", &e));
            }
            if b.get(3) != Some(i) {
                t.violation(format!("{name}: read {:?}, wrote {i}", b.get(3)));
            }
        }
        _ => {
            let a = match Shared::open_or_create(name, 1024, &Tally::default()) {
                Ok(s) => s,
                Err(e) => return t.violation(fail("create", &e)),
            };
            let b = match Shared::<Tally>::open(name) {
                Ok(s) => s,
                Err(e) => return t.violation(fail("open", &e)),
            };
            let before = match a.load() {
                Ok((s, _)) => s.n,
                Err(e) => return t.violation(fail("load", &e)),
            };
            if let Err(e) = a.update(Tally::bump) {
                return t.violation(fail("update", &e));
            }
            match b.load() {
                Ok((s, _)) if s.n == before + 1 && s.is_complete() => {}
                Ok((s, _)) => t.violation(format!("{name}: {s:?} after {before}")),
                Err(e) => t.violation(fail("load", &e)),
            }
        }
    }
}

/// Opens (never creates) the other worker's name of `kind`: it must open, or not be found.
fn open_other(kind: usize, name: &str, t: &mut RaceTally) {
    let array = |r: Result<SharedArray<u64>, shmbus::ArrayError>| match r {
        Ok(_) => Ok(()),
        Err(shmbus::ArrayError::Segment(s)) => Err(s.to_string_code()),
        Err(e) => Err(("array", e.to_string())),
    };
    let typed = |r: Result<(), OpenError>| {
        r.map_err(|e| match e.segment_error() {
            Some(s) => s.to_string_code(),
            None => (open_error_code(&e), e.to_string()),
        })
    };
    let r = match RACE_KINDS[kind] {
        "topic" => {
            let expect = Expect {
                type_info: None,
                ..Expect::new(
                    Kind::Topic,
                    TypeInfo::new("any", 1, 1, Codec::Bytes).expect("type"),
                )
            };
            match Name::new(name) {
                Ok(n) => Segment::open(&n, &expect)
                    .map(drop)
                    .map_err(|e| e.to_string_code()),
                Err(e) => Err(("name", e.to_string())),
            }
        }
        "queue" => typed(QueueBuilder::new(name).existing().open::<u64>().map(drop)),
        "mutex" => typed(Mutex::<u64>::open(name).map(drop)),
        "value" => typed(Value::<u64>::open(name).map(drop)),
        "array" => array(SharedArray::<u64>::attach(name)),
        _ => typed(Shared::<Tally>::open(name).map(drop)),
    };
    match r {
        Ok(()) => t.other_ok += 1,
        Err(("not-found", _)) => t.other_not_found += 1,
        Err((code, msg)) => {
            t.other_errors += 1;
            t.first.get_or_insert(format!("open {name}: {code}: {msg}"));
        }
    }
}

/// A segment error as (code, text).
trait Coded {
    fn to_string_code(&self) -> (&'static str, String);
}

impl Coded for SegmentError {
    fn to_string_code(&self) -> (&'static str, String) {
        (segment_error_code(self), self.to_string())
    }
}

/// Creates, opens, uses and drops one object of each kind in turn, as fast as it can, for
/// `--for-ms`, while `gc` runs elsewhere; also opens the next worker's objects. Prints a
/// `summary` line.
pub(crate) fn gc_race_user(a: &GcRaceArgs) -> Result<(), Fail> {
    let mine = format!("{}.w{}", a.prefix, a.worker);
    let theirs = format!("{}.w{}", a.prefix, (a.worker + 1) % a.workers.max(1));
    println!("ready");
    let deadline = Instant::now() + Duration::from_millis(a.for_ms);
    let mut t = RaceTally::default();
    while Instant::now() < deadline {
        let kind = (t.iterations % RACE_KINDS.len() as u64) as usize;
        race_round(
            kind,
            &format!("{mine}.{}", RACE_KINDS[kind]),
            t.iterations,
            &mut t,
        );
        if a.workers > 1 {
            open_other(kind, &format!("{theirs}.{}", RACE_KINDS[kind]), &mut t);
        }
        t.iterations += 1;
    }
    println!(
        "summary iterations={} created={} stale={} violations={} other_ok={} \
         other_not_found={} other_errors={} msg={}",
        t.iterations,
        t.created,
        t.stale,
        t.violations,
        t.other_ok,
        t.other_not_found,
        t.other_errors,
        t.first.unwrap_or_else(|| "none".into())
    );
    Ok(())
}

#[derive(Args)]
pub(crate) struct GcCliArgs {
    /// The `shmbus` binary.
    #[arg(long)]
    cli: String,
    /// Only names under this prefix (`shmbus gc PREFIX`).
    #[arg(long)]
    prefix: Option<String>,
    #[arg(long, default_value_t = 2000)]
    for_ms: u64,
}

/// Runs `shmbus gc --json [PREFIX]` in a loop for `--for-ms`; prints `gc-cli rounds=..
/// failed=.. removed=..` (the objects its reports name).
pub(crate) fn gc_cli_loop(a: &GcCliArgs) -> Result<(), Fail> {
    if !Path::new(&a.cli).exists() {
        return Err(Fail::new("no-cli", &a.cli));
    }
    println!("ready");
    let deadline = Instant::now() + Duration::from_millis(a.for_ms);
    let (mut rounds, mut failed, mut removed) = (0u64, 0u64, 0u64);
    let mut first = None;
    while Instant::now() < deadline {
        let mut cmd = Command::new(&a.cli);
        cmd.arg("gc").arg("--json");
        if let Some(p) = &a.prefix {
            cmd.arg(p);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Fail::new("spawn", e))?;
        rounds += 1;
        if out.status.success() {
            // One object per `"kind"` in the `removed` list of the report.
            let text = String::from_utf8_lossy(&out.stdout);
            let removed_part = text
                .split("\"unreadable\"")
                .next()
                .unwrap_or_default()
                .to_owned();
            removed += removed_part.matches("\"kind\"").count() as u64;
        } else {
            failed += 1;
            first.get_or_insert(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    println!(
        "gc-cli rounds={rounds} failed={failed} removed={removed} msg={}",
        first.unwrap_or_else(|| "none".into())
    );
    Ok(())
}

//! Peer roles for the hostile-writer tests (`tests/tests/hostile.rs`).
//!
//! **Victims** (`h-topic`, `h-frames`, `h-mutex`, `h-sem`, `h-event`, `h-array`) use one kind of
//! object for `--for-ms`, with bounded calls only, and never stop at an error: every call is an
//! operation whose outcome (`ok` or an error code) is counted, and at the end they print
//! `outcomes role=<role> panics=<n> ops=<n> <op>.<code>=<count> ...`. A call that panics is
//! caught and reported as `panic op=<op> at=<location> msg=<message>`; the handle it used is
//! dropped and joined afresh, and the process exits with status 101 at the end. A watchdog
//! thread prints `stuck op=<op> ms=<elapsed>` when one call takes longer than `--stuck-ms`
//! (and `unstuck op=<op> ms=<elapsed>` if it returns after all), so a hang names its call.
//!
//! The **scribbler** (`h-scribble`) is the hostile writer: it opens the segment files of the
//! objects it is given (and their children, such as an array topic's pool segments) read-write
//! and writes boundary values and random bytes into chosen fields with `pwrite`, never past the
//! end of a file and never changing its size. Every write is printed as a `w ...` line, so a
//! failure can be traced to the writes before it; the choices follow `--seed`.
//!
//! `h-open` opens a topic once (raw with an open timeout, and typed) and prints how long each
//! took; `h-hold` keeps a segment attached until killed; `h-exec` runs a command (the `shmbus`
//! CLI) that dies with the test.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use shmbus::array::AnyArray;
use shmbus::{
    Event, EventMode, Mutex, PublishError, PublishFailure, RecvError, SharedArray, Topic,
};
use shmbus_core::layout::TypeInfo;
use shmbus_core::name::Name;
use shmbus_core::ring::{Overflow, RingConfig, RingLayout};
use shmbus_core::topic::{RawSubscriber, RawTopic, TopicOptions};
use shmbus_tests::{check_frame, fill_frame, frame_shape, open_error_code, FrameMeta, Msg, Rng};

use super::{lock_error, recv_code, Fail, Pub, Sub, TopicArgs};

// ---------------------------------------------------------------------------------------------
// Outcomes, panics, the watchdog
// ---------------------------------------------------------------------------------------------

/// Where and why the last panic happened (set by the panic hook).
static LAST_PANIC: StdMutex<Option<String>> = StdMutex::new(None);

/// Reports panics on stderr (the first ten in full) and keeps the last one for the `panic` line.
fn install_panic_hook() {
    static SHOWN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map_or("?".to_owned(), |l| {
            format!("{}:{}:{}", l.file(), l.line(), l.column())
        });
        let msg = panic_text(info.payload());
        if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 10 {
            eprintln!("thread panicked at {at}:\n{msg}");
        }
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("at={at} msg={}", msg.replace('\n', " ")));
        }
    }));
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_owned()
    }
}

#[derive(Default)]
struct WatchState {
    op: Option<(String, Instant)>,
    reported: bool,
}

/// Prints `stuck op=...` when one operation runs longer than the threshold.
struct Watchdog {
    state: Arc<StdMutex<WatchState>>,
}

impl Watchdog {
    fn start(stuck: Duration) -> Watchdog {
        let state = Arc::new(StdMutex::new(WatchState::default()));
        let s = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(50));
                let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
                let late = match &st.op {
                    Some((op, since)) if !st.reported && since.elapsed() >= stuck => {
                        Some((op.clone(), since.elapsed()))
                    }
                    _ => None,
                };
                if let Some((op, elapsed)) = late {
                    println!("stuck op={op} ms={}", elapsed.as_millis());
                    st.reported = true;
                }
            });
        if let Err(e) = spawned {
            eprintln!("no watchdog thread: {e}");
        }
        Watchdog { state }
    }

    fn enter(&self, op: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st = WatchState {
            op: Some((op.to_owned(), Instant::now())),
            reported: false,
        };
    }

    fn leave(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some((op, since)), true) = (&st.op, st.reported) {
            println!("unstuck op={op} ms={}", since.elapsed().as_millis());
        }
        st.op = None;
    }
}

/// What one operation did.
enum Outcome<R> {
    Ok(R),
    Err(String),
    Panicked,
}

impl<R> Outcome<R> {
    fn ok(self) -> Option<R> {
        match self {
            Outcome::Ok(r) => Some(r),
            _ => None,
        }
    }
}

/// Counts the outcome of every operation of one victim.
struct Tally {
    role: String,
    counts: BTreeMap<String, u64>,
    ops: u64,
    panics: u64,
    watchdog: Watchdog,
    op_file: Option<File>,
}

impl Tally {
    fn new(role: &str, run: &RunArgs) -> Tally {
        install_panic_hook();
        Tally {
            role: role.to_owned(),
            counts: BTreeMap::new(),
            ops: 0,
            panics: 0,
            watchdog: Watchdog::start(Duration::from_millis(run.stuck_ms)),
            op_file: run.op_file.as_ref().and_then(|p| File::create(p).ok()),
        }
    }

    fn count(&mut self, op: &str, code: &str) {
        *self.counts.entry(format!("{op}.{code}")).or_default() += 1;
    }

    /// Runs `f` as the operation `op`, catching a panic.
    fn op<R>(&mut self, op: &str, f: impl FnOnce() -> Result<R, String>) -> Outcome<R> {
        self.ops += 1;
        if let Some(f) = &self.op_file {
            let mut line = [b' '; 64];
            let n = op.len().min(63);
            line[..n].copy_from_slice(&op.as_bytes()[..n]);
            line[63] = b'\n';
            let _ = f.write_all_at(&line, 0);
        }
        self.watchdog.enter(op);
        let r = catch_unwind(AssertUnwindSafe(f));
        self.watchdog.leave();
        match r {
            Ok(Ok(v)) => {
                self.count(op, "ok");
                Outcome::Ok(v)
            }
            Ok(Err(code)) => {
                self.count(op, &code);
                Outcome::Err(code)
            }
            Err(payload) => {
                self.panics += 1;
                self.count(op, "PANIC");
                let last = LAST_PANIC
                    .lock()
                    .ok()
                    .and_then(|mut l| l.take())
                    .unwrap_or_else(|| format!("msg={}", panic_text(&*payload)));
                println!("panic op={op} {last}");
                // Give a panicking handle's peers a moment instead of looping at full speed.
                std::thread::sleep(Duration::from_millis(20));
                Outcome::Panicked
            }
        }
    }

    /// Drops `handle` as the operation `op` (a `Drop` that panics is caught too).
    fn drop_handle<H>(&mut self, op: &str, handle: Option<H>) {
        if let Some(h) = handle {
            let _ = self.op(op, move || {
                drop(h);
                Ok(())
            });
        }
    }

    /// Prints the outcomes; exits with status 101 if any operation panicked.
    fn finish(self) -> Result<(), Fail> {
        let mut line = format!(
            "outcomes role={} panics={} ops={}",
            self.role, self.panics, self.ops
        );
        for (k, v) in &self.counts {
            line.push_str(&format!(" {k}={v}"));
        }
        println!("{line}");
        if self.panics > 0 {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            std::process::exit(101);
        }
        Ok(())
    }
}

/// How long a victim runs.
#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Run for this long, then print the outcomes and exit.
    #[arg(long, default_value_t = 1500)]
    for_ms: u64,
    /// Report an operation that takes longer than this as stuck.
    #[arg(long, default_value_t = 2500)]
    stuck_ms: u64,
    /// Write the name of every operation into this file as it starts (with `pwrite`, so that
    /// the last one is there to read if the process is killed by a signal in the middle of it).
    #[arg(long)]
    op_file: Option<std::path::PathBuf>,
}

impl RunArgs {
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.for_ms)
    }
}

fn pause_us(us: u64) {
    if us > 0 {
        std::thread::sleep(Duration::from_micros(us));
    }
}

fn fail_code(f: Fail) -> String {
    f.0
}

fn recv_error_code(e: &RecvError) -> String {
    match e {
        RecvError::BadDescriptor { .. } => "bad-descriptor".into(),
        RecvError::WrongDtype { .. } => "wrong-dtype".into(),
        e => recv_code(e).into(),
    }
}

fn publish_failure_code(f: &PublishFailure) -> &'static str {
    match f {
        PublishFailure::Timeout => "timeout",
        PublishFailure::Lock(_) => "lock",
        PublishFailure::UsedAfterFork(_) => "used-after-fork",
        _ => "send",
    }
}

fn publish_error_code<T>(e: &PublishError<T>) -> String {
    publish_failure_code(e.reason()).into()
}

fn array_error_code(e: &shmbus::ArrayError) -> String {
    match e {
        shmbus::ArrayError::WrongDtype { .. } => "wrong-dtype".into(),
        shmbus::ArrayError::Segment(s) => shmbus_tests::segment_error_code(s).into(),
        shmbus::ArrayError::Corrupt { .. } => "array-corrupt".into(),
        shmbus::ArrayError::ReadOnly(_) => "read-only".into(),
        _ => "array-other".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Topic victims
// ---------------------------------------------------------------------------------------------

/// What a topic victim does.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TopicRole {
    /// Publishes a message every `--interval-us`.
    Pub,
    /// Receives with `--recv-timeout-ms`.
    Sub,
    /// Joins and leaves, as subscriber and as publisher, over and over.
    Churn,
}

#[derive(Args)]
pub(crate) struct TopicRoleArgs {
    #[command(flatten)]
    topic: TopicArgs,
    #[arg(long, value_enum)]
    role: TopicRole,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 200)]
    interval_us: u64,
    #[arg(long, default_value_t = 100)]
    recv_timeout_ms: u64,
}

/// Receives one message; a message that is not what a publisher wrote is `garbled`.
fn recv_one(sub: &Sub, timeout: Duration) -> Result<(), String> {
    match sub.recv(Some(timeout)) {
        Ok((_, _, _, true)) => Ok(()),
        Ok(_) => Err("garbled".into()),
        Err(e) => Err(recv_error_code(&e)),
    }
}

pub(crate) fn h_topic(a: &TopicRoleArgs) -> Result<(), Fail> {
    let role = match a.role {
        TopicRole::Pub => "pub",
        TopicRole::Sub => "sub",
        TopicRole::Churn => "churn",
    };
    let mut t = Tally::new(&format!("topic-{role}"), &a.run);
    let deadline = a.run.deadline();
    let producer = u64::from(std::process::id());
    let recv_timeout = Duration::from_millis(a.recv_timeout_ms);
    let mut ready = false;
    match a.role {
        TopicRole::Pub => {
            let (mut p, mut index, mut fails) = (None::<Pub>, 0u64, 0u32);
            while Instant::now() < deadline {
                if p.is_none() {
                    p = t
                        .op("open-pub", || Pub::join(&a.topic).map_err(fail_code))
                        .ok();
                    if !ready {
                        println!("ready joined={}", p.is_some());
                        ready = true;
                    }
                    if p.is_none() {
                        pause_us(5000);
                        continue;
                    }
                }
                let pp = p.as_mut().expect("joined");
                match t.op("send", || pp.send(producer, index).map_err(fail_code)) {
                    Outcome::Ok(_) => {
                        index += 1;
                        fails = 0;
                    }
                    Outcome::Err(_) => {
                        fails += 1;
                        if fails > 50 {
                            t.drop_handle("leave-pub", p.take());
                            fails = 0;
                        }
                    }
                    Outcome::Panicked => t.drop_handle("leave-pub", p.take()),
                }
                pause_us(a.interval_us);
            }
            t.drop_handle("leave-pub", p);
        }
        TopicRole::Sub => {
            let (mut s, mut fails) = (None::<Sub>, 0u32);
            while Instant::now() < deadline {
                if s.is_none() {
                    s = t
                        .op("open-sub", || Sub::join(&a.topic).map_err(fail_code))
                        .ok();
                    if !ready {
                        println!("ready joined={}", s.is_some());
                        ready = true;
                    }
                    if s.is_none() {
                        pause_us(5000);
                        continue;
                    }
                }
                let ss = s.as_ref().expect("joined");
                match t.op("recv", || recv_one(ss, recv_timeout)) {
                    Outcome::Ok(()) => fails = 0,
                    Outcome::Err(code) => {
                        if code != "timeout" && code != "lagged" {
                            fails += 1;
                        }
                        if code == "disconnected" {
                            pause_us(2000);
                        }
                        if fails > 100 {
                            t.drop_handle("leave-sub", s.take());
                            fails = 0;
                        }
                    }
                    Outcome::Panicked => t.drop_handle("leave-sub", s.take()),
                }
            }
            t.drop_handle("leave-sub", s);
        }
        TopicRole::Churn => {
            while Instant::now() < deadline {
                let s = t
                    .op("open-sub", || Sub::join(&a.topic).map_err(fail_code))
                    .ok();
                if !ready {
                    println!("ready joined={}", s.is_some());
                    ready = true;
                }
                if let Some(ss) = &s {
                    let _ = t.op("recv", || recv_one(ss, Duration::from_millis(10)));
                }
                t.drop_handle("leave-sub", s);
                let p = t
                    .op("open-pub", || Pub::join(&a.topic).map_err(fail_code))
                    .ok();
                if let Some(mut pp) = p {
                    let _ = t.op("send", || pp.send(producer, 0).map_err(fail_code));
                    t.drop_handle("leave-pub", Some(pp));
                }
                pause_us(2000);
            }
        }
    }
    t.finish()
}

// ---------------------------------------------------------------------------------------------
// Array-topic victims
// ---------------------------------------------------------------------------------------------

#[derive(Args)]
pub(crate) struct FramesRoleArgs {
    #[command(flatten)]
    topic: TopicArgs,
    #[arg(long, value_enum)]
    role: TopicRole,
    #[command(flatten)]
    run: RunArgs,
    /// Base shape of the frames (sizes and dtypes rotate, see `shmbus_tests::frame_shape`).
    #[arg(long, default_value = "32,32,3")]
    shape: String,
    #[arg(long, default_value_t = 500)]
    interval_us: u64,
}

fn send_frame<T: shmbus::Element>(
    p: &mut shmbus::ArrayPublisher<FrameMeta>,
    index: u64,
    shape: &[usize],
) -> Result<(), String> {
    let mut loan = p.loan::<T>(shape).map_err(|e| match e {
        shmbus::PoolLoanError::Exhausted { .. } => "pool-exhausted".to_owned(),
        shmbus::PoolLoanError::Slot(_) => "slot".to_owned(),
        shmbus::PoolLoanError::Segment(s) => shmbus_tests::segment_error_code(&s).to_owned(),
        _ => "pool".to_owned(),
    })?;
    let (block, meta) = loan.parts_mut();
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(block);
    fill_frame(index, bytes);
    *meta = FrameMeta {
        index,
        len: bytes.len() as u64,
    };
    loan.publish().map(drop).map_err(|e| publish_error_code(&e))
}

fn recv_frame(s: &shmbus::ArraySubscriber<FrameMeta>, timeout: Duration) -> Result<(), String> {
    let sample = s.recv_timeout(timeout).map_err(|e| recv_error_code(&e))?;
    let m = *sample.meta();
    if sample.bytes().len() as u64 != m.len || check_frame(m.index, sample.bytes()).is_some() {
        return Err("garbled".into());
    }
    Ok(())
}

pub(crate) fn h_frames(a: &FramesRoleArgs) -> Result<(), Fail> {
    let base: Vec<usize> = a.shape.split(',').filter_map(|p| p.parse().ok()).collect();
    let builder = a
        .topic
        .builder()
        .pool_linger(Duration::from_millis(200))
        .pool_blocks_per_segment(2)
        .pool_max_bytes(8 << 20);
    let mut t = Tally::new(
        match a.role {
            TopicRole::Pub => "frames-pub",
            TopicRole::Sub => "frames-sub",
            TopicRole::Churn => "frames-churn",
        },
        &a.run,
    );
    let deadline = a.run.deadline();
    let mut ready = false;
    let open_sub = || {
        builder
            .array_subscriber::<FrameMeta>()
            .map_err(|e| open_error_code(&e).to_owned())
    };
    match a.role {
        TopicRole::Pub => {
            let (mut p, mut index, mut fails) = (None, 0u64, 0u32);
            while Instant::now() < deadline {
                if p.is_none() {
                    p = t
                        .op("open-pub", || {
                            builder
                                .array_publisher::<FrameMeta>()
                                .map_err(|e| open_error_code(&e).to_owned())
                        })
                        .ok();
                    if !ready {
                        println!("ready joined={}", p.is_some());
                        ready = true;
                    }
                    if p.is_none() {
                        pause_us(5000);
                        continue;
                    }
                }
                let pp = p.as_mut().expect("joined");
                let (dtype, shape) = frame_shape(index, &base, true);
                let r = t.op("send", || {
                    if dtype == "u8" {
                        send_frame::<u8>(pp, index, &shape)
                    } else {
                        send_frame::<f32>(pp, index, &shape)
                    }
                });
                match r {
                    Outcome::Ok(()) => {
                        index += 1;
                        fails = 0;
                    }
                    Outcome::Err(_) => {
                        index += 1;
                        fails += 1;
                        if fails > 50 {
                            t.drop_handle("leave-pub", p.take());
                            fails = 0;
                        }
                    }
                    Outcome::Panicked => t.drop_handle("leave-pub", p.take()),
                }
                pause_us(a.interval_us);
            }
            t.drop_handle("leave-pub", p);
        }
        TopicRole::Sub => {
            let mut s = None;
            while Instant::now() < deadline {
                if s.is_none() {
                    s = t.op("open-sub", open_sub).ok();
                    if !ready {
                        println!("ready joined={}", s.is_some());
                        ready = true;
                    }
                    if s.is_none() {
                        pause_us(5000);
                        continue;
                    }
                }
                let ss = s.as_ref().expect("joined");
                match t.op("recv", || recv_frame(ss, Duration::from_millis(100))) {
                    Outcome::Err(code) if code == "disconnected" => pause_us(2000),
                    Outcome::Panicked => t.drop_handle("leave-sub", s.take()),
                    _ => {}
                }
            }
            t.drop_handle("leave-sub", s);
        }
        TopicRole::Churn => {
            while Instant::now() < deadline {
                let s = t.op("open-sub", open_sub).ok();
                if !ready {
                    println!("ready joined={}", s.is_some());
                    ready = true;
                }
                if let Some(ss) = &s {
                    for _ in 0..2 {
                        let _ = t.op("recv", || recv_frame(ss, Duration::from_millis(20)));
                    }
                }
                t.drop_handle("leave-sub", s);
                pause_us(2000);
            }
        }
    }
    t.finish()
}

// ---------------------------------------------------------------------------------------------
// Named primitives and arrays
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SyncRole {
    /// Mutex: lock, hold a few milliseconds, unlock, again. Semaphore: post. Event: set (and
    /// now and then reset). Array: create it and write it.
    Owner,
    /// Mutex: lock with a timeout, and try-lock. Semaphore, event: wait with a timeout.
    /// Array: attach read-only and read, again and again.
    User,
    /// Array only: attach read-write (any dtype) and write, again and again.
    Writer,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EventModeArg {
    Auto,
    Manual,
}

#[derive(Args)]
pub(crate) struct SyncRoleArgs {
    #[arg(long)]
    name: String,
    #[arg(long, value_enum)]
    role: SyncRole,
    #[command(flatten)]
    run: RunArgs,
    /// Events: the mode of the event the owner creates.
    #[arg(long, value_enum, default_value_t = EventModeArg::Auto)]
    mode: EventModeArg,
    /// Arrays: the shape (u8).
    #[arg(long, default_value = "128,256")]
    shape: String,
}

fn lock_code(e: &shmbus::LockError) -> String {
    lock_error(e).0
}

fn try_lock_code(e: &shmbus::TryLockError) -> String {
    match e {
        shmbus::TryLockError::WouldBlock => "would-block",
        shmbus::TryLockError::NotRecoverable => "not-recoverable",
        _ => "os",
    }
    .into()
}

pub(crate) fn h_mutex(a: &SyncRoleArgs) -> Result<(), Fail> {
    let owner = a.role == SyncRole::Owner;
    let mut t = Tally::new(
        if owner {
            "mutex-holder"
        } else {
            "mutex-locker"
        },
        &a.run,
    );
    let deadline = a.run.deadline();
    let mut m = None::<Mutex<u64>>;
    let mut ready = false;
    while Instant::now() < deadline {
        if m.is_none() {
            m = t
                .op("open", || {
                    if owner {
                        Mutex::open_or_create(&a.name, 0u64)
                    } else {
                        Mutex::open(&a.name)
                    }
                    .map_err(|e| open_error_code(&e).to_owned())
                })
                .ok();
            if !ready {
                println!("ready joined={}", m.is_some());
                ready = true;
            }
            if m.is_none() {
                pause_us(5000);
                continue;
            }
        }
        let mm = m.as_ref().expect("open");
        let timeout = Duration::from_millis(if owner { 200 } else { 100 });
        let mut broken = false;
        match t.op("lock", || {
            mm.lock_timeout(timeout).map_err(|e| lock_code(&e))
        }) {
            Outcome::Ok(mut g) => {
                if g.owner_died() {
                    *g = 0;
                    g.mark_consistent();
                }
                *g = g.wrapping_add(1);
                if owner {
                    std::thread::sleep(Duration::from_millis(5));
                }
                broken |= matches!(
                    t.op("unlock", move || {
                        drop(g);
                        Ok(())
                    }),
                    Outcome::Panicked
                );
            }
            Outcome::Err(_) => pause_us(1000),
            Outcome::Panicked => broken = true,
        }
        if !owner {
            match t.op("try-lock", || mm.try_lock().map_err(|e| try_lock_code(&e))) {
                Outcome::Ok(g) => {
                    broken |= matches!(
                        t.op("unlock", move || {
                            drop(g);
                            Ok(())
                        }),
                        Outcome::Panicked
                    );
                }
                Outcome::Err(_) => {}
                Outcome::Panicked => broken = true,
            }
            pause_us(500);
        }
        if broken {
            t.drop_handle("close", m.take());
        }
    }
    t.drop_handle("close", m);
    t.finish()
}

pub(crate) fn h_sem(a: &SyncRoleArgs) -> Result<(), Fail> {
    let owner = a.role == SyncRole::Owner;
    let mut t = Tally::new(if owner { "sem-poster" } else { "sem-waiter" }, &a.run);
    let deadline = a.run.deadline();
    let mut s = None::<shmbus::Semaphore>;
    let mut ready = false;
    while Instant::now() < deadline {
        if s.is_none() {
            s = t
                .op("open", || {
                    if owner {
                        shmbus::Semaphore::open_or_create(&a.name, 0)
                    } else {
                        shmbus::Semaphore::open(&a.name)
                    }
                    .map_err(|e| open_error_code(&e).to_owned())
                })
                .ok();
            if !ready {
                println!("ready joined={}", s.is_some());
                ready = true;
            }
            if s.is_none() {
                pause_us(5000);
                continue;
            }
        }
        let ss = s.as_ref().expect("open");
        let r = if owner {
            let r = t.op("post", || ss.post().map_err(|_| "overflow".to_owned()));
            pause_us(300);
            r
        } else {
            let r = t.op("wait", || {
                if ss.wait_timeout(Duration::from_millis(50)) {
                    Ok(())
                } else {
                    Err("timeout".to_owned())
                }
            });
            let _ = t.op("try-wait", || Ok(ss.try_wait()));
            let _ = t.op("value", || Ok(ss.value()));
            r
        };
        if matches!(r, Outcome::Panicked) {
            t.drop_handle("close", s.take());
        }
    }
    t.drop_handle("close", s);
    t.finish()
}

pub(crate) fn h_event(a: &SyncRoleArgs) -> Result<(), Fail> {
    let owner = a.role == SyncRole::Owner;
    let mode = match a.mode {
        EventModeArg::Auto => EventMode::AutoReset,
        EventModeArg::Manual => EventMode::ManualReset,
    };
    let mut t = Tally::new(
        if owner {
            "event-setter"
        } else {
            "event-waiter"
        },
        &a.run,
    );
    let deadline = a.run.deadline();
    let mut e = None::<Event>;
    let mut ready = false;
    let mut n = 0u64;
    while Instant::now() < deadline {
        if e.is_none() {
            e = t
                .op("open", || {
                    if owner {
                        Event::open_or_create(&a.name, mode, false)
                    } else {
                        Event::open(&a.name)
                    }
                    .map_err(|e| open_error_code(&e).to_owned())
                })
                .ok();
            if !ready {
                println!("ready joined={}", e.is_some());
                ready = true;
            }
            if e.is_none() {
                pause_us(5000);
                continue;
            }
        }
        let ee = e.as_ref().expect("open");
        n += 1;
        let r = if owner {
            let r = t.op("set", || {
                ee.set();
                Ok(())
            });
            if n % 7 == 0 {
                let _ = t.op("reset", || {
                    ee.reset();
                    Ok(())
                });
            }
            pause_us(1000);
            r
        } else {
            let _ = t.op("is-set", || Ok(ee.is_set()));
            t.op("wait", || {
                if ee.wait_timeout(Duration::from_millis(50)) {
                    Ok(())
                } else {
                    Err("timeout".to_owned())
                }
            })
        };
        if matches!(r, Outcome::Panicked) {
            t.drop_handle("close", e.take());
        }
    }
    t.drop_handle("close", e);
    t.finish()
}

pub(crate) fn h_array(a: &SyncRoleArgs) -> Result<(), Fail> {
    let shape: Vec<usize> = a.shape.split(',').filter_map(|p| p.parse().ok()).collect();
    let mut t = Tally::new(
        match a.role {
            SyncRole::Owner => "array-owner",
            SyncRole::User => "array-reader",
            SyncRole::Writer => "array-writer",
        },
        &a.run,
    );
    let deadline = a.run.deadline();
    let sum = |b: &[u8]| b.iter().map(|&x| u64::from(x)).sum::<u64>();
    let mut ready = false;
    match a.role {
        SyncRole::Owner => {
            let mut arr = None::<SharedArray<u8>>;
            let mut fill = 0u8;
            while Instant::now() < deadline {
                if arr.is_none() {
                    arr = t
                        .op("create", || {
                            SharedArray::<u8>::options()
                                .scoped()
                                .create(&a.name, &shape)
                                .map_err(|e| array_error_code(&e))
                        })
                        .ok();
                    if !ready {
                        println!("ready joined={}", arr.is_some());
                        ready = true;
                    }
                    if arr.is_none() {
                        pause_us(5000);
                        continue;
                    }
                }
                let aa = arr.as_ref().expect("created");
                fill = fill.wrapping_add(1);
                let w = t.op("write", || {
                    aa.fill(fill);
                    Ok(())
                });
                let r = t.op("read", || Ok(sum(&aa.to_vec())));
                if matches!(w, Outcome::Panicked) || matches!(r, Outcome::Panicked) {
                    t.drop_handle("close", arr.take());
                }
                pause_us(5000);
            }
            t.drop_handle("close", arr);
        }
        SyncRole::User | SyncRole::Writer => {
            let writer = a.role == SyncRole::Writer;
            while Instant::now() < deadline {
                if writer {
                    let arr = t
                        .op("attach-rw", || {
                            AnyArray::attach(&a.name).map_err(|e| array_error_code(&e))
                        })
                        .ok();
                    if let Some(aa) = arr {
                        let _ = t.op("write", || {
                            aa.write_from(0, &vec![7; aa.len_bytes()])
                                .map_err(|e| array_error_code(&e))
                        });
                        let _ = t.op("read", || {
                            let mut b = vec![0; aa.len_bytes()];
                            aa.read_into(0, &mut b).map_err(|e| array_error_code(&e))?;
                            Ok(sum(&b))
                        });
                        t.drop_handle("detach", Some(aa));
                    }
                } else {
                    let arr = t
                        .op("attach-ro", || {
                            SharedArray::<u8>::attach_read_only(&a.name)
                                .map_err(|e| array_error_code(&e))
                        })
                        .ok();
                    if let Some(aa) = arr {
                        let _ = t.op("read", || Ok(sum(&aa.to_vec())));
                        t.drop_handle("detach", Some(aa));
                    }
                }
                if !ready {
                    println!("ready");
                    ready = true;
                }
                pause_us(2000);
            }
        }
    }
    t.finish()
}

// ---------------------------------------------------------------------------------------------
// One open, timed
// ---------------------------------------------------------------------------------------------

#[derive(Args)]
pub(crate) struct OpenProbeArgs {
    #[arg(long)]
    topic: String,
    /// The raw open's `open_timeout`.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[command(flatten)]
    run: RunArgs,
}

/// Opens `--topic` (of `Msg`) as a subscriber, once through the raw API with an open timeout and
/// once through the typed API; prints `opened how=<raw|typed> result=<ok|code> ms=<elapsed>`.
pub(crate) fn h_open(a: &OpenProbeArgs) -> Result<(), Fail> {
    let mut t = Tally::new("open-probe", &a.run);
    let name = Name::new(&a.topic).map_err(|e| Fail::new("name", e))?;
    println!("ready");
    let start = Instant::now();
    let r = t.op("open-raw", || {
        let opts = TopicOptions {
            open_timeout: Some(Duration::from_millis(a.timeout_ms)),
            ..TopicOptions::default()
        };
        let topic = RawTopic::open(&name, &TypeInfo::pod::<Msg>(), &opts)
            .map_err(|e| open_error_code(&shmbus::OpenError::Topic(e)).to_owned())?;
        RawSubscriber::new(topic, 0)
            .map(drop)
            .map_err(|e| open_error_code(&shmbus::OpenError::Topic(e)).to_owned())
    });
    let code = match r {
        Outcome::Ok(()) => "ok".to_owned(),
        Outcome::Err(c) => c,
        Outcome::Panicked => "PANIC".to_owned(),
    };
    println!(
        "opened how=raw result={code} ms={}",
        start.elapsed().as_millis()
    );
    let start = Instant::now();
    let r = t.op("open-typed", || {
        Topic::builder(&a.topic)
            .subscriber::<Msg>()
            .map(drop)
            .map_err(|e| open_error_code(&e).to_owned())
    });
    let code = match r {
        Outcome::Ok(()) => "ok".to_owned(),
        Outcome::Err(c) => c,
        Outcome::Panicked => "PANIC".to_owned(),
    };
    println!(
        "opened how=typed result={code} ms={}",
        start.elapsed().as_millis()
    );
    t.finish()
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    Topic,
    Mutex,
    Semaphore,
    Event,
    Array,
}

#[derive(Args)]
pub(crate) struct HoldArgs {
    #[arg(long)]
    name: String,
    #[arg(long, value_enum)]
    kind: KindArg,
}

/// Attaches the segment `--name` (read-only, any type) and keeps it until killed: a user that
/// outlives the victims, as a long-running process would, so that an opener that waits for
/// the other users to go waits for good, and the test sees it.
pub(crate) fn h_hold(a: &HoldArgs) -> Result<(), Fail> {
    use shmbus_core::segment::{Expect, Kind, Segment};
    let name = Name::new(&a.name).map_err(|e| Fail::new("name", e))?;
    let kind = match a.kind {
        KindArg::Topic => Kind::Topic,
        KindArg::Mutex => Kind::Mutex,
        KindArg::Semaphore => Kind::Semaphore,
        KindArg::Event => Kind::Event,
        KindArg::Array => Kind::Array,
    };
    let expect = Expect {
        kind,
        type_info: None,
        read_only: true,
        timeout: Duration::from_secs(1),
    };
    let seg = Segment::open(&name, &expect)
        .map_err(|e| Fail::new(shmbus_tests::segment_error_code(&e), e))?;
    println!("ready");
    let _keep = seg;
    super::sleep_forever();
}

// ---------------------------------------------------------------------------------------------
// Running a command that dies with the test
// ---------------------------------------------------------------------------------------------

#[derive(Args)]
pub(crate) struct ExecArgs {
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// Replaces this process with `command`. The parent-death signal set in `main` survives
/// `execve`, so the command is killed if the test dies (the `shmbus` CLI does not arrange that
/// itself).
pub(crate) fn h_exec(a: &ExecArgs) -> Result<(), Fail> {
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .exec();
    Err(Fail::new("exec", err))
}

// ---------------------------------------------------------------------------------------------
// The scribbler
// ---------------------------------------------------------------------------------------------

#[derive(Args)]
pub(crate) struct ScribbleArgs {
    /// An object to write into: the file of the name and those of its children (`<name>.*`).
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    #[arg(long)]
    seed: u64,
    #[arg(long, default_value_t = 1000)]
    for_ms: u64,
    /// Families of fields to write into, comma-separated (empty: every family).
    #[arg(long, default_value = "")]
    focus: String,
    /// Families never to write into, comma-separated.
    #[arg(long, default_value = "")]
    skip: String,
    /// Mean pause between writes, microseconds.
    #[arg(long, default_value_t = 1000)]
    pause_us: u64,
}

/// A field the scribbler may write: `width` bytes at `off` (an integer), or with `width == 0`,
/// a range of `span` bytes that gets random bytes.
#[derive(Clone, Debug)]
struct Field {
    family: &'static str,
    name: String,
    off: u64,
    width: usize,
    span: usize,
    /// Values worth trying in this field (sizes off by one, indices at their bound, ...).
    hints: Vec<u64>,
}

/// A coherent lie: fields that agree with each other set together (so that validation of each
/// alone passes), while `toggle` flips between its original value and `value` as fast as
/// possible, for an opener to validate one and use the other.
#[derive(Clone, Debug)]
struct Lie {
    name: String,
    set: Vec<(u64, usize, u64)>,
    toggle: (u64, usize, u64),
}

struct Target {
    label: String,
    file: File,
    len: u64,
    fields: Vec<Field>,
    lies: Vec<Lie>,
}

const P: u64 = shmbus_core::segment::HEADER_SIZE as u64;
/// Payload offset of a topic's ring.
const RING: u64 = P + 128;

fn rd(buf: &[u8], off: u64, width: usize) -> u64 {
    let off = off as usize;
    let Some(b) = buf.get(off..off + width) else {
        return 0;
    };
    let mut w = [0u8; 8];
    w[..width].copy_from_slice(b);
    u64::from_ne_bytes(w)
}

fn int(
    family: &'static str,
    name: impl Into<String>,
    off: u64,
    width: usize,
    hints: &[u64],
) -> Field {
    Field {
        family,
        name: name.into(),
        off,
        width,
        span: 0,
        hints: hints.to_vec(),
    }
}

fn blob(family: &'static str, name: impl Into<String>, off: u64, span: usize) -> Field {
    Field {
        family,
        name: name.into(),
        off,
        width: 0,
        span,
        hints: Vec::new(),
    }
}

/// The words of a glibc `pthread_mutex_t` (x86_64) at `base`.
#[rustfmt::skip]
fn mutex_fields(family: &'static str, base: u64, out: &mut Vec<Field>) {
    let pid = u64::from(std::process::id());
    out.push(int(family, "lock", base, 4, &[0, 1, pid, 1 << 30, 1 << 31, (1 << 30) | pid, 0x3fff_ffff]));
    out.push(int(family, "count", base + 4, 4, &[0, 1, u32::MAX as u64]));
    out.push(int(family, "owner", base + 8, 4, &[0, pid, 0x7fff_ffff, 0x7fff_fffe]));
    out.push(int(family, "nusers", base + 12, 4, &[0, 1, u32::MAX as u64]));
    out.push(int(family, "kind", base + 16, 4, &[0, 1, 2, 3, 0x10, 0x12, 0x80, 0x92, 0x40]));
    out.push(int(family, "spins", base + 20, 4, &[0, u32::MAX as u64]));
    out.push(int(family, "list.prev", base + 24, 8, &[0, 1, 8, 0xdead_beef]));
    out.push(int(family, "list.next", base + 32, 8, &[0, 1, 8, 0xdead_beef]));
}

/// The fields of the segment in `buf` (its first bytes) of `len` bytes.
#[rustfmt::skip]
fn fields_of(buf: &[u8], len: u64) -> (Vec<Field>, Vec<Lie>) {
    let mut f = Vec::new();
    let mut lies = Vec::new();
    let payload = rd(buf, 40, 8);
    let max = u64::MAX;
    // The header (docs/architecture.md 2.2).
    f.push(int("state", "state", 8, 4, &[0, 1, 2, 3, u32::MAX as u64]));
    f.push(int("header", "format_version", 12, 4, &[0, 1, 2, 3]));
    f.push(int("header", "kind", 16, 4, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    f.push(int("header", "lifetime", 20, 4, &[0, 1, 2]));
    f.push(int("header", "header_size", 24, 8, &[0, 4095, 4096, 4097, max]));
    f.push(int("header", "total_size", 32, 8, &[0, len - 1, len, len + 1, len - P, max]));
    f.push(int("header", "payload_size", 40, 8, &[0, 127, 128, payload.wrapping_sub(1), payload + 1, len - P, len - P + 1, len, max]));
    f.push(int("header", "creator_pid", 48, 4, &[0, 1, u32::MAX as u64]));
    f.push(int("header", "mode", 52, 4, &[0, 0o777, u32::MAX as u64]));
    f.push(int("header", "created_unix_ns", 56, 8, &[0, max]));
    f.push(int("type", "type_size", 64, 8, &[0, 1, 63, 64, 65, 4096, max]));
    f.push(int("type", "type_align", 72, 8, &[0, 1, 3, 64, 128, max]));
    f.push(int("type", "type_fingerprint", 80, 8, &[0, max]));
    f.push(int("type", "type_codec", 88, 4, &[0, 1, 2, 3, u32::MAX as u64]));
    f.push(int("type", "type_name_len", 92, 4, &[0, 1, 95, 96, 97, u32::MAX as u64]));
    f.push(blob("type", "type_name", 96, 96));
    for i in 0..8u64 {
        f.push(int("params", format!("params[{i}]"), 192 + 8 * i, 8, &[0, 1, u32::MAX as u64, max]));
        f.push(int("counters", format!("counters[{i}]"), 256 + 8 * i, 8, &[0, max, max - 1, 1 << 63]));
    }
    match rd(buf, 16, 4) {
        1 => topic_fields(buf, &mut f, &mut lies),
        2 => {
            mutex_fields("mutex", P, &mut f);
            f.push(int("mutex-value", "value", P + 64, 8, &[0, max]));
        }
        3 => {
            f.push(int("sem", "count", P, 4, &[0, 1, 0x7fff_fffe, 0x7fff_ffff, 0x8000_0000, u32::MAX as u64]));
            f.push(int("sem", "sleepers", P + 4, 4, &[0, 1, u32::MAX as u64]));
        }
        4 => {
            f.push(int("event", "state", P, 4, &[0, 1, 2, 3, u32::MAX as u64, u32::MAX as u64 - 1]));
            f.push(int("event", "sleepers", P + 4, 4, &[0, 1, u32::MAX as u64]));
            f.push(int("event", "mode", P + 8, 4, &[0, 1, 2, u32::MAX as u64]));
        }
        5 => array_fields(buf, payload, &mut f, &mut lies),
        6 => pool_fields(buf, &mut f, &mut lies),
        _ => {}
    }
    // Nothing past the end of the file.
    f.retain(|x| x.off + (x.width.max(x.span) as u64) <= len);
    (f, lies)
}

#[rustfmt::skip]
fn topic_fields(buf: &[u8], f: &mut Vec<Field>, lies: &mut Vec<Lie>) {
    let max = u64::MAX;
    mutex_fields("pubmutex", P, f);
    let w = |i: u64| rd(buf, RING + 8 * i, 8);
    let (cap, slots, slot_size) = (w(0), w(1), w(2));
    let (max_subs, max_pubs, max_held) = (w(3), w(4), w(6));
    let names = [
        "capacity",
        "slots",
        "slot_size",
        "max_subscribers",
        "max_publishers",
        "loans_per_publisher",
        "max_held",
        "overflow",
        "timestamps",
    ];
    for (i, n) in names.iter().enumerate() {
        let v = w(i as u64);
        f.push(int("ring-config", *n, RING + 8 * i as u64, 8, &[0, 1, 2, v.wrapping_sub(1), v + 1, 56, 57, 127, 128, 1024, 1025, 1 << 24, (1 << 24) + 1, u32::MAX as u64, 1 << 32]));
    }
    f.push(int("ring-hot", "publisher_joins", RING + 72, 8, &[0, max]));
    f.push(int("ring-hot", "subscriber_joins", RING + 80, 8, &[0, max, max - 1]));
    let inline = rd(buf, RING + 88, 8);
    f.push(int("ring-config", "inline", RING + 88, 8, &[0, 1, 8, 47, 48, 49, 64, inline + 1, u32::MAX as u64, 1 << 32]));
    let tail = rd(buf, RING + 128, 8);
    f.push(int("ring-hot", "tail", RING + 128, 8, &[0, tail.wrapping_sub(1), tail + 1, tail + cap, tail + cap + 1, max, max - 1, 1 << 63]));
    f.push(int("ring-hot", "notify_word", RING + 256, 4, &[0, u32::MAX as u64]));
    f.push(int("ring-hot", "notify_sleepers", RING + 260, 4, &[0, 1, u32::MAX as u64]));
    f.push(int("ring-hot", "progress_word", RING + 384, 4, &[0, u32::MAX as u64]));
    f.push(int("ring-hot", "progress_sleepers", RING + 388, 4, &[0, 1, u32::MAX as u64]));
    let config = RingConfig {
        capacity: cap as u32,
        slot_size: slot_size as u32,
        max_subscribers: max_subs as u32,
        max_publishers: max_pubs as u32,
        max_held: max_held as u32,
        overflow: if w(7) == 1 {
            Overflow::BackPressure
        } else {
            Overflow::Overwrite
        },
        timestamps: w(8) == 1,
        inline: inline as u32,
    };
    let Ok(l) = RingLayout::new(config) else {
        return;
    };
    if u64::from(l.slots) != slots {
        return;
    }
    let n_slots = u64::from(l.slots);
    let at = |o: usize| RING + o as u64;
    for i in 0..cap.min(64) {
        let e = at(l.entries) + l.entry_size as u64 * i;
        f.push(int("entries", format!("entry[{i}].seq"), e, 8, &[0, 1, tail, tail + 1, tail + cap, tail + cap + 1, max, max - 1, 1 << 63]));
        f.push(int("entries", format!("entry[{i}].slot"), e + 8, 8, &[0, n_slots - 1, n_slots, n_slots + 1, max, max - 1, u32::MAX as u64, 1 << 32]));
        // The message words an entry carries: any bytes are a message, never a fault.
        for wd in 0..(u64::from(l.config.inline).div_ceil(8)) {
            f.push(int("entries", format!("entry[{i}].inline[{wd}]"), e + 16 + 8 * wd, 8, &[0, max, 1 << 63]));
        }
    }
    for s in 0..n_slots.min(64) {
        f.push(int("states", format!("state[{s}]"), at(l.states) + 8 * s, 8, &[0, 1, 1 << 56, (1 << 56) | 1, (1 << 56) - 1, 1 << 57, 2 << 57, 0x7f << 57, max]));
    }
    for k in 0..u64::from(l.config.max_subscribers) {
        let r = at(l.subscribers) + 64 * k;
        f.push(int("subs", format!("sub[{k}].state"), r, 4, &[0, 1, 2, u32::MAX as u64]));
        f.push(int("subs", format!("sub[{k}].pid"), r + 4, 4, &[0, 1, u32::MAX as u64]));
        f.push(int("subs", format!("sub[{k}].cursor"), r + 8, 8, &[0, tail, tail + 1, tail + cap, max, max - 1, 1 << 63]));
        f.push(int("subs", format!("sub[{k}].lagged"), r + 16, 8, &[0, max]));
    }
    for p in 0..u64::from(l.config.max_publishers) {
        let r = at(l.publishers) + 64 * p;
        f.push(int("pubs", format!("pub[{p}].state"), r, 4, &[0, 1, 2, u32::MAX as u64]));
        f.push(int("pubs", format!("pub[{p}].pid"), r + 4, 4, &[0, 1, u32::MAX as u64]));
    }
    let ss = u64::from(l.config.slot_size);
    for s in 0..n_slots.min(64) {
        let d = at(l.data) + ss * s;
        // Serde: the u32 length prefix. Array topics: the block descriptor (12.3).
        f.push(int("slots", format!("slot[{s}]+0"), d, 4, &[0, 1, ss - 4, ss - 3, ss, u32::MAX as u64, u64::from(shmbus_core::pool::DESCRIPTOR_MAGIC)]));
        f.push(int("slots", format!("slot[{s}]+4"), d + 4, 4, &[0, 6, 10, 15, u32::MAX as u64]));
        f.push(int("slots", format!("slot[{s}]+8"), d + 8, 8, &[0, max]));
        if ss >= 128 {
            f.push(int("slots", format!("slot[{s}].segment"), d + 16, 4, &[0, 1, 1023, 1024, u32::MAX as u64]));
            f.push(int("slots", format!("slot[{s}].block"), d + 20, 4, &[0, 1, 2, 3, u32::MAX as u64]));
            f.push(int("slots", format!("slot[{s}].generation"), d + 24, 8, &[0, 1, 2, max]));
            f.push(int("slots", format!("slot[{s}].len"), d + 32, 8, &[0, 1, 4096, 1 << 20, 1 << 40, max]));
            f.push(int("slots", format!("slot[{s}].ndim"), d + 40, 4, &[0, 1, 3, 8, 9, u32::MAX as u64]));
            for j in 0..3u64 {
                f.push(int("slots", format!("slot[{s}].shape[{j}]"), d + 48 + 8 * j, 8, &[0, 1, 1 << 32, max]));
            }
        }
        f.push(blob("slots", format!("slot[{s}]"), d, ss.min(256) as usize));
    }
    // A bigger ring that is self-consistent, in a payload that says it fits, now and then.
    let big_cap = (cap * 64).min(1 << 24);
    let big_slots = big_cap + max_pubs + max_subs * max_held + 1;
    let big = RingLayout::new(RingConfig {
        capacity: big_cap as u32,
        ..config
    });
    if let Ok(big) = big {
        lies.push(Lie {
            name: format!("ring capacity {cap}->{big_cap}, slots {slots}->{big_slots}"),
            set: vec![(RING, 8, big_cap), (RING + 8, 8, big_slots)],
            toggle: (40, 8, 128 + big.size as u64),
        });
    }
}

#[rustfmt::skip]
fn array_fields(buf: &[u8], payload: u64, f: &mut Vec<Field>, lies: &mut Vec<Lie>) {
    let max = u64::MAX;
    let ndim = rd(buf, P + 4, 4);
    let data_len = rd(buf, P + 24, 8);
    f.push(int("array-meta", "dtype", P, 4, &[0, 1, 6, 9, 14, 15, u32::MAX as u64]));
    f.push(int("array-meta", "ndim", P + 4, 4, &[0, 1, 2, 3, 32, 33, u32::MAX as u64]));
    f.push(int("array-meta", "itemsize", P + 8, 8, &[0, 1, 2, 8, max]));
    f.push(int("array-meta", "data_offset", P + 16, 8, &[0, 4095, 4096, 4097, max]));
    f.push(int("array-meta", "data_len", P + 24, 8, &[0, data_len.wrapping_sub(1), data_len + 1, payload, max]));
    f.push(int("array-meta", "order", P + 32, 8, &[0, 1, 2]));
    for i in 0..(ndim.min(32) + 1) {
        f.push(int("array-meta", format!("shape[{i}]"), P + 40 + 8 * i, 8, &[0, 1, 2, 1 << 31, 1 << 32, max]));
        f.push(int("array-meta", format!("strides[{i}]"), P + 296 + 8 * i, 8, &[0, 1, 2, max]));
    }
    f.push(blob("array-data", "data", P + 4096, 256));
    // The first dimension 16 times larger (C strides of a 2-d array do not depend on it).
    let dim0 = rd(buf, P + 40, 8);
    if ndim >= 1 && dim0 > 0 {
        let big_len = data_len / dim0 * dim0 * 16;
        lies.push(Lie {
            name: format!("array shape[0] {dim0}->{}", dim0 * 16),
            set: vec![
                (P + 40, 8, dim0 * 16),
                (P + 24, 8, big_len),
                (192 + 16, 8, dim0 * 16),
            ],
            toggle: (40, 8, 4096 + big_len),
        });
    }
}

#[rustfmt::skip]
fn pool_fields(buf: &[u8], f: &mut Vec<Field>, lies: &mut Vec<Lie>) {
    let max = u64::MAX;
    let count = rd(buf, P + 12, 4);
    let block_size = rd(buf, P + 16, 8);
    let data_offset = rd(buf, P + 24, 8);
    f.push(int("pool-meta", "pool_id", P, 8, &[0, max]));
    f.push(int("pool-meta", "index", P + 8, 4, &[0, 1, 1023, 1024, u32::MAX as u64]));
    f.push(int("pool-meta", "block_count", P + 12, 4, &[0, count.wrapping_sub(1), count + 1, u32::MAX as u64]));
    f.push(int("pool-meta", "block_size", P + 16, 8, &[0, 4095, 4096, block_size + 4096, max]));
    f.push(int("pool-meta", "data_offset", P + 24, 8, &[0, 4095, 4096, data_offset + 4096, max]));
    for b in 0..count.min(16) {
        f.push(int("pool-gens", format!("generation[{b}]"), P + 64 + 8 * b, 8, &[0, 1, 2, max, max - 1, 1 << 63]));
        f.push(blob("pool-blocks", format!("block[{b}]"), P + data_offset + block_size * b, 256));
    }
    // Sixteen times the blocks, with the data offset that goes with them.
    if count > 0 && block_size > 0 {
        let big = count * 16;
        let big_off = (64 + 8 * big).next_multiple_of(4096);
        lies.push(Lie {
            name: format!("pool block_count {count}->{big}"),
            set: vec![(P + 12, 4, big), (P + 24, 8, big_off)],
            toggle: (40, 8, big_off + block_size * big),
        });
    }
}

/// Files of the objects `names` (and of their children) not seen yet.
fn discover(names: &[String], known: &mut HashSet<String>) -> Vec<Target> {
    let prefix = shmbus_core::name::FILE_PREFIX;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(shmbus_core::segment::SHM_DIR) else {
        return out;
    };
    for e in dir.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(obj) = file.strip_prefix(prefix).map(str::to_owned) else {
            continue;
        };
        let ours = names.iter().any(|n| {
            obj == *n
                || obj
                    .strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        });
        if !ours || known.contains(&file) {
            continue;
        }
        let Ok(fh) = File::options().read(true).write(true).open(e.path()) else {
            continue;
        };
        let Ok(len) = fh.metadata().map(|m| m.len()) else {
            continue;
        };
        if len < P {
            continue;
        }
        let mut buf = vec![0u8; len.min(3 * P) as usize];
        if fh.read_exact_at(&mut buf, 0).is_err() {
            continue;
        }
        known.insert(file);
        let (fields, lies) = fields_of(&buf, len);
        println!(
            "target file={obj} len={len} kind={} fields={} lies={}",
            rd(&buf, 16, 4),
            fields.len(),
            lies.len()
        );
        out.push(Target {
            label: obj,
            file: fh,
            len,
            fields,
            lies,
        });
    }
    out
}

fn width_max(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    }
}

fn pick_value(rng: &mut Rng, width: usize, orig: u64, hints: &[u64]) -> u64 {
    let max = width_max(width);
    let bits = 8 * width as u64;
    let r = rng.range(0, 100);
    let v = if r < 50 && !hints.is_empty() {
        hints[rng.range(0, hints.len() as u64) as usize]
    } else if r < 90 {
        let generic = [
            0,
            1,
            2,
            max,
            max - 1,
            1 << (bits - 1),
            orig.wrapping_add(1),
            orig.wrapping_sub(1),
            orig ^ (1 << rng.range(0, bits)),
            0x7fff_ffff,
            0x8000_0000,
            1 << 32,
        ];
        generic[rng.range(0, generic.len() as u64) as usize]
    } else {
        rng.next_u64()
    };
    v & max
}

struct Scribbler {
    rng: Rng,
    start: Instant,
    writes: u64,
    toggles: u64,
    failed: u64,
    /// Restores due: (when, target, offset, bytes).
    pending: Vec<(Instant, usize, u64, Vec<u8>)>,
}

impl Scribbler {
    fn put(&mut self, t: &Target, off: u64, bytes: &[u8]) {
        if off + bytes.len() as u64 > t.len || t.file.write_all_at(bytes, off).is_err() {
            self.failed += 1;
        }
    }

    fn get(t: &Target, off: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        let _ = t.file.read_exact_at(&mut b, off);
        b
    }

    fn restore_due(&mut self, targets: &[Target], all: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            if all || self.pending[i].0 <= now {
                let (_, ti, off, bytes) = self.pending.swap_remove(i);
                self.put(&targets[ti], off, &bytes);
            } else {
                i += 1;
            }
        }
    }

    fn t_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    fn write_field(&mut self, targets: &[Target], ti: usize, field: &Field) {
        let t = &targets[ti];
        self.writes += 1;
        let n = self.writes;
        if field.width == 0 {
            let len = self.rng.range(1, field.span as u64 + 1) as usize;
            let start = self.rng.range(0, (field.span - len) as u64 + 1);
            let off = field.off + start;
            let orig = Self::get(t, off, len);
            let bytes: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
            let flip = self.rng.range(0, 2) == 0;
            let mode = if flip { "burst-flip" } else { "burst" };
            println!(
                "w n={n} t_ms={} file={} fam={} field={} off={off} len={len} mode={mode}",
                self.t_ms(),
                t.label,
                field.family,
                field.name
            );
            self.put(t, off, &bytes);
            if flip {
                let due = Instant::now() + Duration::from_micros(self.rng.range(100, 20_000));
                self.pending.push((due, ti, off, orig));
            }
            return;
        }
        let w = field.width;
        let orig_bytes = Self::get(t, field.off, w);
        let orig = rd(&orig_bytes, 0, w);
        let value = pick_value(&mut self.rng, w, orig, &field.hints);
        let bytes = value.to_ne_bytes()[..w].to_vec();
        let r = self.rng.range(0, 100);
        let mode = if r < 35 {
            "stick".to_owned()
        } else if r < 80 {
            format!("flip:{}us", self.rng.range(100, 20_000))
        } else {
            format!("toggle:{}us", self.rng.range(500, 10_000))
        };
        println!(
            "w n={n} t_ms={} file={} fam={} field={} off={} width={w} value={value:#x} orig={orig:#x} mode={mode}",
            self.t_ms(),
            t.label,
            field.family,
            field.name,
            field.off
        );
        if let Some(us) = mode
            .strip_prefix("flip:")
            .and_then(|m| m.strip_suffix("us"))
        {
            self.put(t, field.off, &bytes);
            let due = Instant::now() + Duration::from_micros(us.parse().unwrap_or(1000));
            self.pending.push((due, ti, field.off, orig_bytes));
        } else if let Some(us) = mode
            .strip_prefix("toggle:")
            .and_then(|m| m.strip_suffix("us"))
        {
            let until = Instant::now() + Duration::from_micros(us.parse().unwrap_or(1000));
            while Instant::now() < until {
                self.put(t, field.off, &bytes);
                self.put(t, field.off, &orig_bytes);
                self.toggles += 1;
            }
        } else {
            self.put(t, field.off, &bytes);
        }
    }

    fn tell_lie(&mut self, targets: &[Target], ti: usize, lie: &Lie) {
        let t = &targets[ti];
        self.writes += 1;
        let ms = self.rng.range(20, 120);
        println!(
            "w n={} t_ms={} file={} fam=lies field={:?} toggle_off={} toggle_value={:#x} mode=toggle:{ms}ms",
            self.writes,
            self.t_ms(),
            t.label,
            lie.name,
            lie.toggle.0,
            lie.toggle.2
        );
        let saved: Vec<(u64, Vec<u8>)> = lie
            .set
            .iter()
            .chain(std::iter::once(&lie.toggle))
            .map(|&(off, w, _)| (off, Self::get(t, off, w)))
            .collect();
        for &(off, w, v) in &lie.set {
            self.put(t, off, &v.to_ne_bytes()[..w]);
        }
        let (off, w, v) = lie.toggle;
        let orig = &saved[saved.len() - 1].1;
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            self.put(t, off, &v.to_ne_bytes()[..w]);
            self.put(t, off, orig);
            self.toggles += 1;
        }
        for (off, bytes) in saved.iter().rev() {
            self.put(t, *off, bytes);
        }
    }
}

pub(crate) fn h_scribble(a: &ScribbleArgs) -> Result<(), Fail> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (focus, skip) = (list(&a.focus), list(&a.skip));
    let allowed = |fam: &str| {
        (focus.is_empty() || focus.iter().any(|f| f == fam)) && !skip.iter().any(|f| f == fam)
    };
    let mut s = Scribbler {
        rng: Rng::from_seed(a.seed),
        start: Instant::now(),
        writes: 0,
        toggles: 0,
        failed: 0,
        pending: Vec::new(),
    };
    let deadline = s.start + Duration::from_millis(a.for_ms);
    let mut known = HashSet::new();
    let mut targets = discover(&a.names, &mut known);
    println!("ready targets={}", targets.len());
    let mut last_look = Instant::now();
    while Instant::now() < deadline {
        if last_look.elapsed() > Duration::from_millis(50) {
            targets.extend(discover(&a.names, &mut known));
            last_look = Instant::now();
        }
        s.restore_due(&targets, false);
        // Choose a target with something allowed to write, then a field or a lie.
        let choices: Vec<(usize, usize, bool)> = targets
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                let fields = t
                    .fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| allowed(f.family))
                    .map(move |(fi, _)| (ti, fi, false));
                let lies = (0..t.lies.len())
                    .filter(|_| allowed("lies"))
                    .map(move |li| (ti, li, true));
                fields.chain(lies)
            })
            .collect();
        if choices.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        // Lies are few but matter: give them a fair share.
        let lies: Vec<_> = choices.iter().filter(|c| c.2).copied().collect();
        let (ti, i, lie) = if !lies.is_empty() && s.rng.range(0, 100) < 10 {
            lies[s.rng.range(0, lies.len() as u64) as usize]
        } else {
            choices[s.rng.range(0, choices.len() as u64) as usize]
        };
        if lie {
            let l = targets[ti].lies[i].clone();
            s.tell_lie(&targets, ti, &l);
        } else {
            let f = targets[ti].fields[i].clone();
            s.write_field(&targets, ti, &f);
        }
        let pause = s.rng.range(0, 2 * a.pause_us + 1);
        std::thread::sleep(Duration::from_micros(pause));
    }
    s.restore_due(&targets, true);
    // A parting shot, every other run: one value from a field's own hints, left in place, so that
    // the victims (which run on) also meet lasting damage, not only transient values.
    let last: Vec<(usize, usize)> = targets
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.fields
                .iter()
                .enumerate()
                .filter(|(_, f)| allowed(f.family) && f.width > 0 && !f.hints.is_empty())
                .map(move |(fi, _)| (ti, fi))
        })
        .collect();
    if !last.is_empty() && s.rng.range(0, 2) == 0 {
        let (ti, fi) = last[s.rng.range(0, last.len() as u64) as usize];
        let (t, f) = (&targets[ti], &targets[ti].fields[fi]);
        let value = f.hints[s.rng.range(0, f.hints.len() as u64) as usize] & width_max(f.width);
        s.writes += 1;
        println!(
            "w n={} t_ms={} file={} fam={} field={} off={} width={} value={value:#x} mode=last",
            s.writes,
            s.t_ms(),
            t.label,
            f.family,
            f.name,
            f.off,
            f.width
        );
        s.put(t, f.off, &value.to_ne_bytes()[..f.width]);
    }
    println!(
        "scribbled writes={} toggles={} failed={} files={}",
        s.writes,
        s.toggles,
        s.failed,
        targets.len()
    );
    Ok(())
}

//! Hostile writers: another process with write access scribbles into live segments.
//!
//! The promise under test: input that another process controls never crashes, panics or hangs
//! a user of shmbus. Typed errors are fine, and so are garbage values inside bounds (a message
//! that is not what its publisher wrote); a signal (`SIGSEGV`, `SIGBUS`, `SIGABRT`), a panic
//! (exit status 101, `panicked at` on stderr) or a call that overruns its bound is not.
//!
//! - [`hostile_writers_never_crash_panic_or_hang`]: rounds of real processes (publishers,
//!   subscribers, joiners, array-topic publishers and subscribers, lock holders and lockers,
//!   semaphore and event users, named-array owners and readers, and the `shmbus` CLI) using one
//!   object while a scribbler (`shmbus-test-peer h-scribble`) writes boundary values and random
//!   bytes into its segments: header fields, ring configuration, cursors, entries, slot states
//!   and data, participant rows, the publish mutex, pool segments, named primitives, array
//!   metadata, and self-consistent lies whose size check races with their use (see
//!   `tests/src/bin/shmbus-test-peer/hostile.rs`). A holder process keeps the object attached
//!   until the victims are done, as a long-running user would. The CLI runs `ls NAME`,
//!   `inspect NAME`, `echo NAME --count 3 --timeout 2` (topics) and `gc NAME`, now and then
//!   with `--json`; the name is a prefix, so that the CLI looks at this round's objects only.
//!   Seeded and replayable:
//!
//!   | variable | meaning |
//!   |---|---|
//!   | `SHMBUS_HOSTILE_SEED` | the seed (default: from the clock; printed, and in every failure) |
//!   | `SHMBUS_HOSTILE_ROUNDS` | rounds (default 9, one per scenario, within a 30 s budget; when set, no budget) |
//!   | `SHMBUS_HOSTILE_ROUND` | run only this round of the seed (to replay one failure) |
//!   | `SHMBUS_HOSTILE_SCENARIOS` | only these scenarios (comma-separated names, see [`Scenario`]) |
//!   | `SHMBUS_HOSTILE_FOCUS` | write only into these families of fields (overrides the seed's choice) |
//!   | `SHMBUS_HOSTILE_SKIP` | never write into these families (e.g. `state`, to look past a known hang) |
//!   | `SHMBUS_HOSTILE_MS` | how long each round's processes run (default 1200) |
//!   | `SHMBUS_HOSTILE_BUDGET_S` | stop starting rounds after this many seconds |
//!   | `SHMBUS_HOSTILE_GDB` | backtraces (with `gdb`, if installed) of at most this many hung processes (default 1; 0: none) |
//!   | `SHMBUS_CLI` | the `shmbus` binary to run (default: built with `$CARGO build -p shmbus-cli`) |
//!
//!   It prints `hostile: seed=.. rounds=.. writes=.. processes=.. crashes=.. panics=.. hangs=..`
//!   and, on failure, every finding with its round, the process, what happened (signal, panic
//!   location, the call that hung and a backtrace) and the scribbler's last writes before it.
//!   A long run for a report: `SHMBUS_HOSTILE_ROUNDS=200 cargo nextest run -p shmbus-tests
//!   --test hostile --no-capture`.
//! - [`closed_while_in_use`]: a live topic's header `state` set to `CLOSED` while its publisher
//!   runs; a new subscriber and `shmbus ls`, `inspect`, `echo` must each return within 10 s.
//!
//! Every child runs under a wall-clock bound and is killed on overrun, so a hang fails the test
//! instead of hanging the suite; a [`Scope`] per round removes every file the round made.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmbus_tests::{cli_exe, scope, shm_file, Line, Peer, Rng, Scope, STEP};

// ---------------------------------------------------------------------------------------------
// The CLI binary, and running things under a bound
// ---------------------------------------------------------------------------------------------

/// Spawns the CLI with `args` through `shmbus-test-peer h-exec`, so that it dies with the test.
fn spawn_cli(s: &mut Scope, args: &[&str]) -> Peer {
    let mut full = vec!["h-exec", "--"];
    let cli = cli_exe().to_string_lossy().into_owned();
    full.push(&cli);
    full.extend_from_slice(args);
    s.spawn(&format!("shmbus {}", args.join(" ")), &full)
}

static BACKTRACES: AtomicU32 = AtomicU32::new(0);

/// How many hung processes get a backtrace: `SHMBUS_HOSTILE_GDB`, else `default`.
fn backtraces_allowed(default: u32) -> u32 {
    std::env::var("SHMBUS_HOSTILE_GDB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The stacks of process `pid`, from `gdb` (bounded), trimmed to the frames; `None` when gdb is
/// not installed, failed, or the allowance of backtraces is used up.
fn backtrace(pid: u32, allowed: u32) -> Option<String> {
    if BACKTRACES.fetch_add(1, Ordering::Relaxed) >= allowed {
        return None;
    }
    let mut child = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Per thread: the innermost frame, then the frames of shmbus code (not the std plumbing,
    // nor the peer's own wrappers); threads without shmbus frames (the watchdog) are left out.
    let mut shown = Vec::new();
    for thread in text.split("\nThread ").skip(1) {
        let frames: Vec<String> = thread
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| {
                // `in f (a=..., b=...) at file:line` -> `in f at file:line`.
                let l = match (l.find(" ("), l.rfind(") at ")) {
                    (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b + 1..]),
                    _ => l.to_owned(),
                };
                l.chars().take(200).collect()
            })
            .collect();
        // The function of a frame: `#3  0x.. in f at ...` or `#3  f at ...`.
        let ours = |f: &str| {
            let func = f
                .split(" in ")
                .nth(1)
                .unwrap_or(f.split_whitespace().nth(1).unwrap_or(""));
            ["shmbus_core::", "shmbus::", "shmbus_test_peer::", "<shmbus"]
                .iter()
                .any(|p| func.starts_with(p))
                && !func.contains("hostile::Tally")
        };
        let header = thread.lines().next().unwrap_or("");
        if !frames.iter().any(|f| ours(f)) || header.contains("\"watchdog\"") {
            continue;
        }
        let mut keep: Vec<String> = frames.iter().take(1).cloned().collect();
        keep.extend(frames.iter().skip(1).filter(|f| ours(f)).take(12).cloned());
        shown.push(keep.join("\n"));
    }
    (!shown.is_empty()).then(|| shown.join("\n  --\n"))
}

/// How a process ended.
#[derive(Debug)]
enum End {
    /// Exited by itself (any status: the CLI's typed errors are exit statuses 1 and 2).
    Exited(ExitStatus),
    /// Overran its bound and was killed; with `gdb`'s view of it just before.
    Hung {
        after: Duration,
        backtrace: Option<String>,
    },
}

/// One process of a round (or of a focused test).
struct Proc {
    label: String,
    victim: bool,
    peer: Peer,
    started: Instant,
    bound: Duration,
    /// Backtraces this test may take of hung processes, in all.
    backtraces: u32,
    end: Option<End>,
    lines: Vec<Line>,
    stderr: String,
    /// Where a victim writes the name of each operation as it starts.
    op_file: Option<PathBuf>,
}

impl Proc {
    fn new(label: String, victim: bool, peer: Peer, bound: Duration) -> Proc {
        Proc {
            label,
            victim,
            peer,
            started: Instant::now(),
            bound,
            backtraces: backtraces_allowed(1),
            end: None,
            lines: Vec::new(),
            stderr: String::new(),
            op_file: None,
        }
    }

    /// The operation the victim had started last (from its `--op-file`).
    fn last_op(&self) -> Option<String> {
        let op = std::fs::read_to_string(self.op_file.as_ref()?).ok()?;
        let op = op.trim();
        (!op.is_empty()).then(|| op.to_owned())
    }

    /// Looks at the process once: records its end, or kills it once over its bound.
    fn poll(&mut self) {
        if self.end.is_some() {
            return;
        }
        if let Some(st) = self.peer.exit_status() {
            self.end = Some(End::Exited(st));
        } else if self.started.elapsed() > self.bound {
            let bt = backtrace(self.peer.pid(), self.backtraces);
            self.peer.kill();
            self.end = Some(End::Hung {
                after: self.started.elapsed(),
                backtrace: bt,
            });
        }
        if self.end.is_some() {
            self.lines = self.peer.drain(Duration::from_secs(2));
            self.stderr = self.peer.stderr_text();
        }
    }

    fn lines_tagged<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Line> + 'a {
        self.lines.iter().filter(move |l| l.tag == tag)
    }

    /// What went wrong, if anything: `(kind, detail)` with kind `crash`, `panic`, `hang` or
    /// `failed`.
    fn verdict(&self) -> Option<(&'static str, String)> {
        let stuck: Vec<&str> = self.lines_tagged("stuck").map(|l| l.raw.as_str()).collect();
        match self.end.as_ref()? {
            End::Hung { after, backtrace } => {
                let mut d = format!(
                    "still running after {after:.1?} (bound {:?}); killed",
                    self.bound
                );
                for s in &stuck {
                    let _ = write!(d, "\n    {s}");
                }
                if stuck.is_empty() && self.victim {
                    d.push_str("\n    (no `stuck` line: the process itself did not get to report)");
                }
                if let Some(bt) = backtrace {
                    let _ = write!(d, "\n    backtrace (gdb):\n{}", indent(bt, 6));
                }
                Some(("hang", d))
            }
            End::Exited(st) => {
                let panics: Vec<&str> =
                    self.lines_tagged("panic").map(|l| l.raw.as_str()).collect();
                let stderr_panic = self
                    .stderr
                    .lines()
                    .position(|l| l.contains("panicked at"))
                    .map(|i| {
                        self.stderr
                            .lines()
                            .skip(i)
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" | ")
                    });
                if let Some(sig) = st.signal() {
                    let mut d = format!("killed by signal {sig} ({})", signal_name(sig));
                    if let Some(op) = self.last_op() {
                        let _ = write!(d, " during op={op}");
                    }
                    if let Some(p) = &stderr_panic {
                        let _ = write!(d, "\n    stderr: {p}");
                    }
                    let tail: Vec<&str> = self.stderr.lines().rev().take(4).collect();
                    if !tail.is_empty() && stderr_panic.is_none() {
                        let _ = write!(
                            d,
                            "\n    stderr (last lines): {}",
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        );
                    }
                    return Some(("crash", d));
                }
                if st.code() == Some(101) || stderr_panic.is_some() || !panics.is_empty() {
                    let mut d = String::from("panicked");
                    let mut distinct: Vec<&str> = Vec::new();
                    for p in &panics {
                        // One line per distinct location.
                        let at = p.split(" at=").nth(1).unwrap_or(p);
                        if !distinct.contains(&at) {
                            distinct.push(at);
                            let _ = write!(d, "\n    {p}");
                        }
                    }
                    if panics.is_empty() {
                        if let Some(p) = &stderr_panic {
                            let _ = write!(d, "\n    {p}");
                        }
                    }
                    if panics.len() > distinct.len() {
                        let _ = write!(d, "\n    ({} panics in all)", panics.len());
                    }
                    return Some(("panic", d));
                }
                if self.victim && (!st.success() || self.lines_tagged("outcomes").next().is_none())
                {
                    let err: Vec<&str> =
                        self.lines_tagged("error").map(|l| l.raw.as_str()).collect();
                    return Some((
                        "failed",
                        format!(
                            "{st} without outcomes: {err:?}\n    stderr: {}",
                            self.stderr.trim()
                        ),
                    ));
                }
                None
            }
        }
    }
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGKILL => "SIGKILL",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// The objects a round puts under attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A `Pod` topic: a publisher, two subscribers, a joiner.
    PodTopic,
    /// A serde topic: the same.
    SerdeTopic,
    /// A topic with three publisher rows (the robust publish mutex): two publishers, a
    /// subscriber, a joiner.
    MultiPublisher,
    /// A back-pressure topic: a publisher, a subscriber, a joiner.
    BackPressure,
    /// An array topic and its pool segments: a publisher, a subscriber, a joiner.
    ArrayTopic,
    /// A named mutex: a holder and two lockers.
    Mutex,
    /// A named semaphore: a poster and two waiters.
    Semaphore,
    /// A named event: a setter and two waiters.
    Event,
    /// A named array: its owner, a reader and a writer.
    NamedArray,
}

const SCENARIOS: [Scenario; 9] = [
    Scenario::PodTopic,
    Scenario::SerdeTopic,
    Scenario::MultiPublisher,
    Scenario::BackPressure,
    Scenario::ArrayTopic,
    Scenario::Mutex,
    Scenario::Semaphore,
    Scenario::Event,
    Scenario::NamedArray,
];

const HEADER_FAMILIES: [&str; 5] = ["state", "header", "type", "params", "counters"];
const RING_FAMILIES: [&str; 8] = [
    "ring-config",
    "ring-hot",
    "entries",
    "states",
    "subs",
    "pubs",
    "slots",
    "lies",
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::PodTopic => "pod-topic",
            Scenario::SerdeTopic => "serde-topic",
            Scenario::MultiPublisher => "multi-publisher",
            Scenario::BackPressure => "back-pressure",
            Scenario::ArrayTopic => "array-topic",
            Scenario::Mutex => "mutex",
            Scenario::Semaphore => "semaphore",
            Scenario::Event => "event",
            Scenario::NamedArray => "named-array",
        }
    }

    /// The kind of segment the scenario's object is (for `h-hold`).
    fn kind(self) -> &'static str {
        match self {
            Scenario::Mutex => "mutex",
            Scenario::Semaphore => "semaphore",
            Scenario::Event => "event",
            Scenario::NamedArray => "array",
            _ => "topic",
        }
    }

    fn is_topic(self) -> bool {
        matches!(
            self,
            Scenario::PodTopic
                | Scenario::SerdeTopic
                | Scenario::MultiPublisher
                | Scenario::BackPressure
                | Scenario::ArrayTopic
        )
    }

    /// The families of fields (of the scribbler) that this scenario's segments have.
    fn families(self) -> Vec<&'static str> {
        let mut f = HEADER_FAMILIES.to_vec();
        match self {
            Scenario::PodTopic | Scenario::SerdeTopic | Scenario::BackPressure => {
                f.extend(RING_FAMILIES)
            }
            Scenario::MultiPublisher => {
                f.extend(RING_FAMILIES);
                f.push("pubmutex");
            }
            Scenario::ArrayTopic => {
                f.extend(RING_FAMILIES);
                f.extend(["pool-meta", "pool-gens", "pool-blocks"]);
            }
            Scenario::Mutex => f.extend(["mutex", "mutex-value"]),
            Scenario::Semaphore => f.push("sem"),
            Scenario::Event => f.push("event"),
            Scenario::NamedArray => f.extend(["array-meta", "array-data", "lies"]),
        }
        f
    }

    /// The victims: the first creates the object (and is waited for), the others join it.
    fn victims(self, name: &str, rng: &mut Rng) -> Vec<(String, Vec<String>)> {
        let topic = |extra: &[&str], role: &str| -> Vec<String> {
            let mut v: Vec<String> = ["h-topic", "--topic", name, "--role", role]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.extend(["--publish-timeout-ms", "300"].map(String::from));
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let sync = |cmd: &str, role: &str, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = [cmd, "--name", name, "--role", role]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let named = |label: &str, args: Vec<String>| (label.to_owned(), args);
        match self {
            Scenario::PodTopic | Scenario::SerdeTopic => {
                let t: &[&str] = if self == Scenario::SerdeTopic {
                    &["--type", "rec"]
                } else {
                    &[]
                };
                vec![
                    named("publisher", topic(t, "pub")),
                    named("subscriber 1", topic(t, "sub")),
                    named("subscriber 2", topic(t, "sub")),
                    named("joiner", topic(t, "churn")),
                ]
            }
            Scenario::MultiPublisher => {
                let t: &[&str] = &["--max-publishers", "3"];
                vec![
                    named("publisher 1", topic(t, "pub")),
                    named("publisher 2", topic(t, "pub")),
                    named("subscriber", topic(t, "sub")),
                    named("joiner", topic(t, "churn")),
                ]
            }
            Scenario::BackPressure => {
                let t: &[&str] = &["--overflow", "back-pressure", "--capacity", "8"];
                vec![
                    named("publisher", topic(t, "pub")),
                    named("subscriber", topic(t, "sub")),
                    named("joiner", topic(t, "churn")),
                ]
            }
            Scenario::ArrayTopic => {
                let frames = |role: &str| -> Vec<String> {
                    [
                        "h-frames",
                        "--topic",
                        name,
                        "--role",
                        role,
                        "--publish-timeout-ms",
                        "300",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
                };
                vec![
                    named("array publisher", frames("pub")),
                    named("array subscriber", frames("sub")),
                    named("array joiner", frames("churn")),
                ]
            }
            Scenario::Mutex => vec![
                named("lock holder", sync("h-mutex", "owner", &[])),
                named("locker 1", sync("h-mutex", "user", &[])),
                named("locker 2", sync("h-mutex", "user", &[])),
            ],
            Scenario::Semaphore => vec![
                named("poster", sync("h-sem", "owner", &[])),
                named("waiter 1", sync("h-sem", "user", &[])),
                named("waiter 2", sync("h-sem", "user", &[])),
            ],
            Scenario::Event => {
                let mode = if rng.range(0, 2) == 0 {
                    "auto"
                } else {
                    "manual"
                };
                vec![
                    named("setter", sync("h-event", "owner", &["--mode", mode])),
                    named("waiter 1", sync("h-event", "user", &[])),
                    named("waiter 2", sync("h-event", "user", &[])),
                ]
            }
            Scenario::NamedArray => vec![
                named("array owner", sync("h-array", "owner", &[])),
                named("array reader", sync("h-array", "user", &[])),
                named("array writer", sync("h-array", "writer", &[])),
            ],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The randomised rounds
// ---------------------------------------------------------------------------------------------

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

fn env_list(key: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One thing that went wrong.
struct Finding {
    kind: &'static str,
    round: u64,
    scenario: Scenario,
    focus: String,
    process: String,
    detail: String,
    /// The scribbler's writes shortly before the finding (or its last ones).
    writes: Vec<String>,
}

#[derive(Default)]
struct Figures {
    rounds: u64,
    writes: u64,
    toggles: u64,
    processes: u64,
    ops: u64,
    typed_errors: u64,
    crashes: u64,
    panics: u64,
    hangs: u64,
    failed: u64,
}

/// Runs round `k`: the scenario's victims, the scribbler and the CLI against one object.
fn round(
    k: u64,
    seed: u64,
    scenario: Scenario,
    ms: u64,
    figures: &mut Figures,
    findings: &mut Vec<Finding>,
) {
    let rseed = mix(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut rng = Rng::from_seed(rseed);
    let mut s = scope!("hostile");
    let name = s.name();

    // What to write into: the seed's choice of the scenario's families (less those skipped),
    // unless overridden.
    let skipped = env_list("SHMBUS_HOSTILE_SKIP");
    let mut families = scenario.families();
    families.retain(|f| !skipped.iter().any(|s| s == f));
    if families.is_empty() {
        return;
    }
    let focus: Vec<String> = {
        let forced = env_list("SHMBUS_HOSTILE_FOCUS");
        if !forced.is_empty() {
            forced
        } else if rng.range(0, 4) == 0 {
            Vec::new() // every family
        } else {
            let n = rng.range(1, 4);
            let mut f: Vec<String> = Vec::new();
            for _ in 0..n {
                let fam = families[rng.range(0, families.len() as u64) as usize];
                if !f.iter().any(|x| x == fam) {
                    f.push(fam.to_owned());
                }
            }
            f
        }
    };
    let focus_text = if focus.is_empty() {
        "all".to_owned()
    } else {
        focus.join(",")
    };
    let skip = skipped.join(",");
    figures.rounds += 1;

    let run = ms.to_string();
    let victim_bound = Duration::from_millis(ms) + Duration::from_secs(4);
    let mut procs: Vec<Proc> = Vec::new();
    for (i, (label, mut args)) in scenario.victims(&name, &mut rng).into_iter().enumerate() {
        let op_file = std::env::temp_dir().join(format!("{name}.{i}.op"));
        s.track_file(op_file.clone());
        args.extend(["--for-ms".to_owned(), run.clone()]);
        args.extend([
            "--op-file".to_owned(),
            op_file.to_string_lossy().into_owned(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut peer = s.spawn(&label, &argv);
        if i == 0 {
            // The creator first, so that the others join what it made.
            if let Err(e) = peer.try_expect("ready", STEP) {
                findings.push(Finding {
                    kind: "failed",
                    round: k,
                    scenario,
                    focus: focus_text.clone(),
                    process: label.clone(),
                    detail: format!("did not get ready before any hostile write: {e}"),
                    writes: Vec::new(),
                });
            }
        }
        let mut p = Proc::new(label, true, peer, victim_bound);
        p.op_file = Some(op_file);
        procs.push(p);
    }
    for p in procs.iter_mut().skip(1) {
        let _ = p.peer.try_expect("ready", STEP);
    }
    // A user that outlives the victims (killed once they are done): without it, an opener that
    // waits for the other users to go would be freed by the victims' own exit.
    let mut holder = s.spawn(
        "holder",
        &["h-hold", "--name", &name, "--kind", scenario.kind()],
    );
    let _ = holder.try_expect("ready", STEP);

    let scribble_ms = ms * 7 / 10;
    // Sometimes a storm of writes, sometimes a few that each last.
    let pause_us = [100, 500, 2000, 10_000][rng.range(0, 4) as usize].to_string();
    let seed_arg = rseed.to_string();
    let scribble_ms_arg = scribble_ms.to_string();
    let scribbler = s.spawn(
        "scribbler",
        &[
            "h-scribble",
            "--name",
            &name,
            "--seed",
            &seed_arg,
            "--for-ms",
            &scribble_ms_arg,
            "--focus",
            &focus.join(","),
            "--skip",
            &skip,
            "--pause-us",
            &pause_us,
        ],
    );
    let mut scribbler = Proc::new(
        "scribbler".into(),
        false,
        scribbler,
        Duration::from_millis(scribble_ms) + Duration::from_secs(5),
    );

    // The CLI, at moments spread over the round.
    let json = |rng: &mut Rng| rng.range(0, 3) == 0;
    let mut cli: Vec<(Duration, Vec<String>)> = Vec::new();
    let mut add = |at: u64, mut args: Vec<&str>, j: bool| {
        if j {
            args.push("--json");
        }
        cli.push((
            Duration::from_millis(at),
            args.into_iter().map(str::to_owned).collect(),
        ));
    };
    add(ms * 2 / 10, vec!["ls", &name], json(&mut rng));
    add(ms * 4 / 10, vec!["inspect", &name], json(&mut rng));
    if scenario.is_topic() {
        add(
            ms * 5 / 10,
            vec!["echo", &name, "--count", "3", "--timeout", "2"],
            json(&mut rng),
        );
    }
    add(ms * 6 / 10, vec!["gc", &name], false);
    let cli_bound = Duration::from_secs(6);

    let start = Instant::now();
    let mut pending = cli.into_iter().peekable();
    loop {
        while let Some((at, _)) = pending.peek() {
            if start.elapsed() < *at {
                break;
            }
            let (_, args) = pending.next().expect("peeked");
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let peer = spawn_cli(&mut s, &argv);
            procs.push(Proc::new(
                format!("shmbus {}", args.join(" ")),
                false,
                peer,
                cli_bound,
            ));
        }
        scribbler.poll();
        for p in procs.iter_mut() {
            p.poll();
        }
        if pending.peek().is_none()
            && scribbler.end.is_some()
            && procs.iter().all(|p| p.end.is_some())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    holder.kill();

    // Figures.
    let writes: Vec<String> = scribbler.lines_tagged("w").map(|l| l.raw.clone()).collect();
    match scribbler.lines_tagged("scribbled").next() {
        Some(l) => {
            figures.writes += l.num("writes");
            figures.toggles += l.num("toggles");
        }
        None => figures.writes += writes.len() as u64,
    }
    figures.processes += procs.len() as u64 + 1;
    for p in &procs {
        if let Some(o) = p.lines_tagged("outcomes").next() {
            figures.ops += o.num("ops");
            figures.typed_errors += o
                .fields
                .iter()
                .filter(|(k, _)| k.contains('.') && !k.ends_with(".ok") && !k.ends_with(".PANIC"))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum::<u64>();
        }
    }

    // Findings.
    for p in procs.iter().chain(std::iter::once(&scribbler)) {
        let Some((kind, detail)) = p.verdict() else {
            continue;
        };
        match kind {
            "crash" => figures.crashes += 1,
            "panic" => figures.panics += 1,
            "hang" => figures.hangs += 1,
            _ => figures.failed += 1,
        }
        findings.push(Finding {
            kind,
            round: k,
            scenario,
            focus: focus_text.clone(),
            process: format!("{} (pid {})", p.label, p.peer.pid()),
            detail,
            writes: writes.iter().rev().take(12).rev().cloned().collect(),
        });
    }
    eprintln!(
        "round {k}: {} focus={focus_text} writes={} processes={} findings={} last: {}",
        scenario.name(),
        writes.len(),
        procs.len() + 1,
        findings.iter().filter(|f| f.round == k).count(),
        writes.last().map_or("-", |w| w.as_str())
    );
}

/// Randomised rounds of hostile writes into live segments (see the module documentation).
#[test]
fn hostile_writers_never_crash_panic_or_hang() {
    let seed = env_u64("SHMBUS_HOSTILE_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
    });
    let explicit_rounds = env_u64("SHMBUS_HOSTILE_ROUNDS");
    let rounds = explicit_rounds.unwrap_or(SCENARIOS.len() as u64);
    let budget = env_u64("SHMBUS_HOSTILE_BUDGET_S")
        .map(Duration::from_secs)
        .or_else(|| explicit_rounds.is_none().then(|| Duration::from_secs(30)));
    let ms = env_u64("SHMBUS_HOSTILE_MS").unwrap_or(1200).max(200);
    let only_round = env_u64("SHMBUS_HOSTILE_ROUND");
    let wanted = env_list("SHMBUS_HOSTILE_SCENARIOS");
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| wanted.is_empty() || wanted.iter().any(|w| w == s.name()))
        .collect();
    assert!(
        !scenarios.is_empty(),
        "SHMBUS_HOSTILE_SCENARIOS matches no scenario"
    );
    eprintln!("hostile: SHMBUS_HOSTILE_SEED={seed} rounds={rounds} ms={ms}");
    // Build the CLI before the clock starts.
    let _ = cli_exe();

    let started = Instant::now();
    let mut figures = Figures::default();
    let mut findings = Vec::new();
    let mut skipped = 0;
    let offset = seed % scenarios.len() as u64;
    for k in 0..rounds {
        if only_round.is_some_and(|r| r != k) {
            continue;
        }
        if budget.is_some_and(|b| started.elapsed() > b) {
            skipped += 1;
            continue;
        }
        let scenario = scenarios[((k + offset) % scenarios.len() as u64) as usize];
        round(k, seed, scenario, ms, &mut figures, &mut findings);
    }

    let summary = format!(
        "hostile: seed={seed} rounds={} writes={} toggles={} processes={} ops={} typed_errors={} \
         crashes={} panics={} hangs={} failed={}{} elapsed={:.1?}",
        figures.rounds,
        figures.writes,
        figures.toggles,
        figures.processes,
        figures.ops,
        figures.typed_errors,
        figures.crashes,
        figures.panics,
        figures.hangs,
        figures.failed,
        if skipped > 0 {
            format!(" skipped={skipped} (time budget)")
        } else {
            String::new()
        },
        started.elapsed()
    );
    eprintln!("{summary}");
    if findings.is_empty() {
        return;
    }
    let mut report = format!(
        "{} finding(s); replay with SHMBUS_HOSTILE_SEED={seed} (one round: SHMBUS_HOSTILE_ROUND=N)\n",
        findings.len()
    );
    for f in &findings {
        let _ = writeln!(
            report,
            "\n[{}] round {} ({}, focus {}): {}\n  {}",
            f.kind,
            f.round,
            f.scenario.name(),
            f.focus,
            f.process,
            f.detail
        );
        if !f.writes.is_empty() {
            let _ = writeln!(report, "  last writes of the scribbler:");
            for w in &f.writes {
                let _ = writeln!(report, "    {w}");
            }
        }
    }
    panic!("{summary}\n{report}");
}

// ---------------------------------------------------------------------------------------------
// Focused: a topic marked closed while in use
// ---------------------------------------------------------------------------------------------

/// With a publisher running, the topic's header `state` (u32 at file offset 8) is set to
/// `CLOSED` (2), which only the last user out should write. A new subscriber (raw, with an open
/// timeout, and typed), `shmbus ls`, `shmbus inspect TOPIC` and `shmbus echo TOPIC --count 3
/// --timeout 2` must each return, with output or a typed error, within 10 s.
#[test]
fn closed_while_in_use() {
    const BOUND: Duration = Duration::from_secs(10);
    let _ = cli_exe();
    let mut s = scope!("closed");
    let name = s.name();
    let mut publisher = s.spawn(
        "publisher",
        &[
            "publish",
            "--topic",
            &name,
            "--forever",
            "--interval-us",
            "1000",
        ],
    );
    publisher.expect("ready", STEP);
    let file = File::options()
        .write(true)
        .open(shm_file(&name))
        .expect("open the topic's file");
    file.write_all_at(&2u32.to_ne_bytes(), 8)
        .expect("write CLOSED into the header's state");

    let mut procs = vec![Proc::new(
        "new subscriber (h-open: raw with a 1 s open timeout, then typed)".into(),
        true,
        s.spawn(
            "new subscriber",
            &[
                "h-open",
                "--topic",
                &name,
                "--timeout-ms",
                "1000",
                "--stuck-ms",
                "3000",
            ],
        ),
        BOUND,
    )];
    for args in [
        vec!["ls"],
        vec!["inspect", name.as_str()],
        vec!["echo", name.as_str(), "--count", "3", "--timeout", "2"],
    ] {
        let peer = spawn_cli(&mut s, &args);
        procs.push(Proc::new(
            format!("shmbus {}", args.join(" ")),
            false,
            peer,
            BOUND,
        ));
    }
    for p in procs.iter_mut() {
        p.backtraces = backtraces_allowed(4);
    }
    while procs.iter().any(|p| p.end.is_none()) {
        for p in procs.iter_mut() {
            p.poll();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut failures = String::new();
    for p in &procs {
        let took = match &p.end {
            Some(End::Exited(st)) => format!("{st} after {:.1?}", p.started.elapsed()),
            _ => String::new(),
        };
        eprintln!(
            "{}: {took} {}",
            p.label,
            p.lines_tagged("opened")
                .map(|l| l.raw.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        if let Some((kind, detail)) = p.verdict() {
            let _ = writeln!(failures, "\n[{kind}] {}:\n  {detail}", p.label);
        }
    }
    assert!(
        publisher.is_running(),
        "the publisher died\n{}",
        publisher.transcript()
    );
    assert!(
        failures.is_empty(),
        "with the topic's state set to CLOSED while a publisher uses it, every open must \
         return within {BOUND:?}:{failures}"
    );
}

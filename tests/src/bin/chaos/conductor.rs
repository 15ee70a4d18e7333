//! The conductor: makes the run's objects, starts a process in every slot, kills and pauses
//! them on the schedule (starting replacements), reads every line they print, stops them in
//! order at the end, and accounts for everything.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use shmbus::{Lifetime, Mutex, Queue, QueueStats, SerdeQueue, Shared, SharedArray, Value};
use shmbus_core::name::Name;
use shmbus_core::time::monotonic_ns;
use shmbus_tests::{Line, Msg, Tally};

use crate::account::{
    counter_verdict, first_index_after, lock_verdict, parse_seen, survivor_shortfall, Policy,
    ProducerLife, QueueAccount, Recovery, Verdict,
};
use crate::schedule::{schedule, Action, Event};
use crate::workers::{
    array_word, lock_parts, msg_from_bytes, queue_builder, ChaosFrame, Words, ADD_BATCH,
    ARRAY_WORDS, UPDATE_BATCH,
};

/// The Python workers' program.
const PY_WORKER: &str = include_str!("worker.py");

/// A worker silent this long (not paused) is hung.
const STALL: Duration = Duration::from_secs(15);
/// A worker (Python included, on a loaded machine) gets this long to print `ready`.
const STARTUP: Duration = Duration::from_secs(60);
/// Each step of the shutdown (publishers, then subscribers, then queue consumers) gets this.
const SHUTDOWN_STEP: Duration = Duration::from_secs(20);
/// Rust slots are drawn this many times as often as Python ones (a Python start is costly).
const RUST_WEIGHT: u32 = 4;
const PY_WEIGHT: u32 = 1;

/// The harness's options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) kills: u64,
    pub(crate) seed: u64,
    pub(crate) json: Option<PathBuf>,
    pub(crate) duration: Duration,
    pub(crate) python: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    Pod,
    Rec,
    Frames,
}

#[derive(Debug)]
struct TopicDef {
    label: &'static str,
    kind: TopicKind,
    policy: Policy,
    max_pubs: u32,
}

#[derive(Debug)]
struct QueueDef {
    label: &'static str,
    mode: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    TopicPub(usize),
    TopicSub(usize),
    PyTopicPub(usize),
    PyTopicSub(usize),
    QueuePut(usize),
    QueueGet { queue: usize, copy: bool },
    PyQueueGet(usize),
    Lock,
    PyLock,
    Add,
    PyAdd,
    Words,
    SharedState,
    Attach { rw: bool },
    Gc,
    ChurnSub(usize),
    PyFramesSub(usize),
}

impl Role {
    fn is_python(self) -> bool {
        matches!(
            self,
            Role::PyTopicPub(_)
                | Role::PyTopicSub(_)
                | Role::PyQueueGet(_)
                | Role::PyLock
                | Role::PyAdd
        )
    }

    fn topic_pub(self) -> Option<usize> {
        match self {
            Role::TopicPub(t) | Role::PyTopicPub(t) => Some(t),
            _ => None,
        }
    }

    fn topic_sub(self) -> Option<usize> {
        match self {
            Role::TopicSub(t) | Role::PyTopicSub(t) | Role::PyFramesSub(t) => Some(t),
            _ => None,
        }
    }

    fn queue_get(self) -> Option<usize> {
        match self {
            Role::QueueGet { queue, .. } | Role::PyQueueGet(queue) => Some(queue),
            _ => None,
        }
    }

    /// Whether the worker stops on `quit` (queue consumers stop when the queue is closed;
    /// subscribers are told after every publisher is gone).
    fn is_producer(self) -> bool {
        self.topic_sub().is_none() && self.queue_get().is_none()
    }
}

/// One process at a time plays a slot; a killed one is replaced at once.
#[derive(Debug)]
struct Slot {
    role: Role,
    label: String,
    live: Option<usize>,
    started: u64,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Running,
    /// Killed by the schedule.
    Killed,
    /// Killed because it hung.
    KilledHung,
    Exited(ExitStatus),
}

#[derive(Debug)]
struct Worker {
    id: u64,
    slot: usize,
    pid: u32,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    spawned_ns: u64,
    spawned: Instant,
    ready_ns: Option<u64>,
    last_line: Instant,
    end: End,
    ended_ns: u64,
    eof: bool,
    final_line: Option<Line>,
    error: Option<String>,
    /// The latest progress count.
    prog: u64,
    /// Publishers: `(printed_ns, sent)` of every report, from `(spawned_ns, 0)`.
    reports: Vec<(u64, u64)>,
    pauses: Vec<(u64, u64)>,
    paused_until: Option<(Instant, u64)>,
    holes: u64,
    baddesc: u64,
    joinlag: u64,
    hangs: Vec<(u64, u64, String)>,
    stderr: Arc<StdMutex<String>>,
}

impl Worker {
    fn live(&self) -> bool {
        self.end == End::Running
    }

    fn killed(&self) -> bool {
        matches!(self.end, End::Killed | End::KilledHung)
    }

    /// Ended by being told to, after printing its final line.
    fn graceful(&self) -> bool {
        matches!(self.end, End::Exited(s) if s.success()) && self.final_line.is_some()
    }
}

/// What the run found.
#[derive(Debug, Default)]
struct Tally2 {
    kills: u64,
    stops: u64,
    hangs: u64,
    v: Verdict,
    leaked: u64,
    recoveries: Vec<Recovery>,
    redelivered: u64,
    excused_hangs: u64,
    joinlags: u64,
    stale_collected: u64,
    /// The first few findings, for the report.
    notes: Vec<String>,
    notes_left_off: u64,
}

impl Tally2 {
    fn note(&mut self, s: String) {
        if self.notes.len() < 40 {
            self.notes.push(s);
        } else {
            self.notes_left_off += 1;
        }
    }
}

/// The conductor's own handles: they keep the objects (and their counters) alive however the
/// workers die, and give the final figures.
struct Held {
    queues: Vec<HeldQueue>,
    mutex: Mutex<u64>,
    lock_values: [Value<u64>; 3],
    adds: Value<u64>,
    words: Value<Words>,
    shared: Shared<Tally>,
}

enum HeldQueue {
    Pod(Queue<Msg>),
    Bytes(SerdeQueue<Vec<u8>>),
}

impl HeldQueue {
    fn stats(&self) -> QueueStats {
        match self {
            HeldQueue::Pod(q) => q.stats(),
            HeldQueue::Bytes(q) => q.stats(),
        }
    }

    fn reclaim_dead(&self) {
        match self {
            HeldQueue::Pod(q) => drop(q.reclaim_dead()),
            HeldQueue::Bytes(q) => drop(q.reclaim_dead()),
        }
    }

    fn close(&self) -> Result<(), shmbus::GetError> {
        match self {
            HeldQueue::Pod(q) => q.close(),
            HeldQueue::Bytes(q) => q.close(),
        }
    }

    /// Takes, reports and acknowledges what is left; returns how many.
    fn drain(&self, account: &mut QueueAccount) -> Result<u64, shmbus::GetError> {
        let mut n = 0;
        loop {
            let r = match self {
                HeldQueue::Pod(q) => q.try_receive().and_then(|d| {
                    let m = *d;
                    account.sighting(m.producer, m.index, d.deliveries(), m.is_intact());
                    d.ack()
                }),
                HeldQueue::Bytes(q) => q.try_receive().and_then(|d| {
                    let (m, ok) = msg_from_bytes(d.value());
                    account.sighting(m.producer, m.index, d.deliveries(), ok);
                    d.ack()
                }),
            };
            match r {
                Ok(()) => n += 1,
                Err(shmbus::GetError::Empty | shmbus::GetError::Closed) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }
}

pub(crate) struct Run {
    opts: Options,
    prefix: String,
    exe: PathBuf,
    python: Option<PathBuf>,
    python_note: String,
    /// The Python workers' program, written out for the run (removed at the end).
    py_script: Option<PathBuf>,
    topics: Vec<TopicDef>,
    queues: Vec<QueueDef>,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    tx: Sender<(usize, Option<String>)>,
    rx: Receiver<(usize, Option<String>)>,
    t: Tally2,
    accounts: Vec<QueueAccount>,
    /// Per topic: when its publishers were killed.
    pub_kills: Vec<Vec<u64>>,
    killed_lock_tags: HashSet<u64>,
    kills_by_role: HashMap<&'static str, u64>,
    held: Option<Held>,
    next_id: u64,
}

fn role_kind(r: Role) -> &'static str {
    match r {
        Role::TopicPub(_) => "topic publisher",
        Role::TopicSub(_) => "topic subscriber",
        Role::PyTopicPub(_) => "python publisher",
        Role::PyTopicSub(_) => "python subscriber",
        Role::QueuePut(_) => "queue producer",
        Role::QueueGet { .. } => "queue consumer",
        Role::PyQueueGet(_) => "python queue consumer",
        Role::Lock => "lock holder",
        Role::PyLock => "python lock holder",
        Role::Add => "value adder",
        Role::PyAdd => "python value adder",
        Role::Words => "locked-value writer",
        Role::SharedState => "shared-state writer",
        Role::Attach { .. } => "array attacher",
        Role::Gc => "gc runner",
        Role::ChurnSub(_) => "churning subscriber",
        Role::PyFramesSub(_) => "python array subscriber",
    }
}

fn field(l: &Line, k: &str) -> Option<u64> {
    l.fields.get(k).and_then(|v| v.parse().ok())
}

/// Whether `python` can import shmbus (and numpy); `Err(why)` otherwise.
fn probe_python(python: &Path) -> Result<String, String> {
    let mut child = Command::new(python)
        .args([
            "-c",
            "import shmbus, numpy; print(shmbus.__version__, numpy.__version__)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer in 60 s", python.display()));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if out.status.success() {
        let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(format!("shmbus and numpy {v}"))
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_owned();
        Err(format!(
            "{} cannot import shmbus and numpy ({last})",
            python.display()
        ))
    }
}

impl Run {
    pub(crate) fn new(opts: Options) -> Result<Run, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let prefix = format!("chaos-{}-{}-", std::process::id(), opts.seed);
        let (python, python_note) = match &opts.python {
            None => (None, "skipped: no --python interpreter given".to_owned()),
            Some(p) => match probe_python(p) {
                Ok(v) => (Some(p.clone()), v),
                Err(why) => (None, format!("skipped: {why}")),
            },
        };
        let topics = vec![
            TopicDef {
                label: "pod-ow",
                kind: TopicKind::Pod,
                policy: Policy::Overwrite,
                max_pubs: 4,
            },
            TopicDef {
                label: "pod-bp",
                kind: TopicKind::Pod,
                policy: Policy::BackPressure,
                max_pubs: 3,
            },
            TopicDef {
                label: "rec-ow",
                kind: TopicKind::Rec,
                policy: Policy::Overwrite,
                max_pubs: 1,
            },
            TopicDef {
                label: "rec-bp",
                kind: TopicKind::Rec,
                policy: Policy::BackPressure,
                max_pubs: 2,
            },
            TopicDef {
                label: "frm-ow",
                kind: TopicKind::Frames,
                policy: Policy::Overwrite,
                max_pubs: 1,
            },
            TopicDef {
                label: "frm-bp",
                kind: TopicKind::Frames,
                policy: Policy::BackPressure,
                max_pubs: 1,
            },
        ];
        let queues = vec![
            QueueDef {
                label: "q-amo",
                mode: "amo",
            },
            QueueDef {
                label: "q-ack",
                mode: "ack",
            },
            QueueDef {
                label: "q-bytes",
                mode: "bytes",
            },
        ];
        let mut roles = Vec::new();
        let add =
            |roles: &mut Vec<Role>, r: Role, n: usize| roles.extend(std::iter::repeat_n(r, n));
        add(&mut roles, Role::TopicPub(0), 2);
        add(&mut roles, Role::TopicSub(0), 2);
        add(&mut roles, Role::TopicPub(1), 2);
        add(&mut roles, Role::TopicSub(1), 2);
        add(&mut roles, Role::TopicPub(2), 1);
        add(&mut roles, Role::TopicSub(2), 2);
        add(&mut roles, Role::TopicPub(3), 2);
        add(&mut roles, Role::TopicSub(3), 1);
        add(&mut roles, Role::TopicPub(4), 1);
        add(&mut roles, Role::TopicSub(4), 2);
        add(&mut roles, Role::TopicPub(5), 1);
        add(&mut roles, Role::TopicSub(5), 1);
        for q in 0..2 {
            add(&mut roles, Role::QueuePut(q), 2);
            add(
                &mut roles,
                Role::QueueGet {
                    queue: q,
                    copy: true,
                },
                1,
            );
            add(
                &mut roles,
                Role::QueueGet {
                    queue: q,
                    copy: false,
                },
                1,
            );
        }
        add(&mut roles, Role::QueuePut(2), 1);
        add(
            &mut roles,
            Role::QueueGet {
                queue: 2,
                copy: false,
            },
            1,
        );
        add(&mut roles, Role::Lock, 2);
        add(&mut roles, Role::Add, 1);
        add(&mut roles, Role::Words, 2);
        add(&mut roles, Role::SharedState, 2);
        add(&mut roles, Role::Attach { rw: true }, 1);
        add(&mut roles, Role::Attach { rw: false }, 1);
        add(&mut roles, Role::Gc, 1);
        add(&mut roles, Role::ChurnSub(1), 1);
        add(&mut roles, Role::ChurnSub(4), 1);
        if python.is_some() {
            add(&mut roles, Role::PyTopicSub(0), 1);
            add(&mut roles, Role::PyTopicPub(0), 1);
            add(&mut roles, Role::PyTopicSub(1), 1);
            add(&mut roles, Role::PyQueueGet(2), 1);
            add(&mut roles, Role::PyFramesSub(4), 1);
            add(&mut roles, Role::PyFramesSub(5), 1);
            add(&mut roles, Role::PyLock, 1);
            add(&mut roles, Role::PyAdd, 1);
        }
        let slots = roles
            .into_iter()
            .enumerate()
            .map(|(i, role)| Slot {
                role,
                label: format!("{i}:{}", role_kind(role)),
                live: None,
                started: 0,
            })
            .collect();
        let py_script = match &python {
            Some(_) => {
                let path = std::env::temp_dir()
                    .join(format!("shmbus-chaos-{}-worker.py", std::process::id()));
                std::fs::write(&path, PY_WORKER)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        let accounts = queues
            .iter()
            .map(|q| QueueAccount::new(q.mode != "amo"))
            .collect();
        let pub_kills = topics.iter().map(|_| Vec::new()).collect();
        Ok(Run {
            opts,
            prefix,
            exe,
            python,
            python_note,
            py_script,
            topics,
            queues,
            slots,
            workers: Vec::new(),
            tx,
            rx,
            t: Tally2::default(),
            accounts,
            pub_kills,
            killed_lock_tags: HashSet::new(),
            kills_by_role: HashMap::new(),
            held: None,
            next_id: 1,
        })
    }

    fn topic_name(&self, t: usize) -> String {
        format!("{}{}", self.prefix, self.topics[t].label)
    }

    fn queue_name(&self, q: usize) -> String {
        format!("{}{}", self.prefix, self.queues[q].label)
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// Makes the objects every worker opens, and keeps them open.
    fn setup(&mut self) -> Result<(), String> {
        let e = |what: &str| {
            let what = what.to_owned();
            move |err: shmbus::OpenError| format!("creating {what}: {err}")
        };
        let mut queues = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            let b = queue_builder(&self.queue_name(i), q.mode);
            queues.push(if q.mode == "bytes" {
                HeldQueue::Bytes(b.open_serde::<Vec<u8>>().map_err(e(q.label))?)
            } else {
                HeldQueue::Pod(b.open::<Msg>().map_err(e(q.label))?)
            });
        }
        let lock = self.name("lock");
        let mutex = Mutex::open_or_create(&lock, 0u64).map_err(e("lock"))?;
        let [a, b, h] = lock_parts(&lock);
        let lock_values = [
            Value::open_or_create(&a, 0u64).map_err(e("lock.a"))?,
            Value::open_or_create(&b, 0u64).map_err(e("lock.b"))?,
            Value::open_or_create(&h, 0u64).map_err(e("lock.h"))?,
        ];
        let adds = Value::open_or_create(&self.name("adds"), 0u64).map_err(e("adds"))?;
        let words = Value::open_or_create(&self.name("words"), [0u64; 32]).map_err(e("words"))?;
        let shared = Shared::open_or_create(&self.name("shared"), 4096, &Tally::default())
            .map_err(e("shared"))?;
        // The persistent array: made, filled, and left (persistent arrays outlive their users).
        let arr = SharedArray::<u64>::create(&self.name("array"), &[ARRAY_WORDS])
            .map_err(|err| format!("creating the array: {err}"))?;
        let want: Vec<u64> = (0..ARRAY_WORDS).map(array_word).collect();
        arr.write_at(0, &want)
            .map_err(|err| format!("filling the array: {err}"))?;
        drop(arr);
        self.held = Some(Held {
            queues,
            mutex,
            lock_values,
            adds,
            words,
            shared,
        });
        Ok(())
    }

    fn py_script_arg(&self) -> String {
        self.py_script
            .as_ref()
            .expect("python slots only with python")
            .display()
            .to_string()
    }

    fn command(&self, slot: usize, id: u64) -> Command {
        let role = self.slots[slot].role;
        let s = |x: &str| x.to_owned();
        let (program, args): (PathBuf, Vec<String>) = match role {
            Role::TopicPub(t) | Role::TopicSub(t) => {
                let d = &self.topics[t];
                let frames = d.kind == TopicKind::Frames;
                let sub = matches!(role, Role::TopicSub(_));
                let verb = match (frames, sub) {
                    (false, false) => "topic-pub",
                    (false, true) => "topic-sub",
                    (true, false) => "frames-pub",
                    (true, true) => "frames-sub",
                };
                let mut a = vec![
                    s("worker"),
                    s(verb),
                    s("--topic"),
                    self.topic_name(t),
                    s("--kind"),
                    s(if d.kind == TopicKind::Rec {
                        "rec"
                    } else {
                        "pod"
                    }),
                    s("--policy"),
                    s(d.policy.as_str()),
                    s("--max-pubs"),
                    d.max_pubs.to_string(),
                ];
                if !sub {
                    a.extend([s("--id"), id.to_string()]);
                } else if self.slots[..slot].iter().filter(|x| x.role == role).count() % 2 == 1 {
                    // Every second subscriber of a topic holds its last sample, and under
                    // overwrite starts a few messages back.
                    a.push(s("--hold"));
                    if d.policy == Policy::Overwrite {
                        a.extend([s("--history"), s("4")]);
                    }
                }
                (self.exe.clone(), a)
            }
            Role::QueuePut(q) => (
                self.exe.clone(),
                vec![
                    s("worker"),
                    s("queue-put"),
                    s("--name"),
                    self.queue_name(q),
                    s("--mode"),
                    s(self.queues[q].mode),
                    s("--id"),
                    id.to_string(),
                ],
            ),
            Role::QueueGet { queue, copy } => (
                self.exe.clone(),
                vec![
                    s("worker"),
                    s("queue-get"),
                    s("--name"),
                    self.queue_name(queue),
                    s("--mode"),
                    s(self.queues[queue].mode),
                    s("--style"),
                    s(if copy { "copy" } else { "inplace" }),
                ],
            ),
            Role::Lock => (
                self.exe.clone(),
                vec![
                    s("worker"),
                    s("lock"),
                    s("--name"),
                    self.name("lock"),
                    s("--id"),
                    id.to_string(),
                ],
            ),
            Role::Add | Role::Words | Role::SharedState => {
                let (verb, what) = match role {
                    Role::Add => ("add", "adds"),
                    Role::Words => ("words", "words"),
                    _ => ("shared-state", "shared"),
                };
                (
                    self.exe.clone(),
                    vec![
                        s("worker"),
                        s(verb),
                        s("--name"),
                        self.name(what),
                        s("--id"),
                        id.to_string(),
                    ],
                )
            }
            Role::Attach { rw } => {
                let mut a = vec![
                    s("worker"),
                    s("attach"),
                    s("--name"),
                    self.name("array"),
                    s("--id"),
                    id.to_string(),
                ];
                if rw {
                    a.push(s("--rw"));
                }
                (self.exe.clone(), a)
            }
            Role::ChurnSub(t) => {
                let d = &self.topics[t];
                (
                    self.exe.clone(),
                    vec![
                        s("worker"),
                        s("churn-sub"),
                        s("--topic"),
                        self.topic_name(t),
                        s("--kind"),
                        s(if d.kind == TopicKind::Frames {
                            "frames"
                        } else {
                            "pod"
                        }),
                        s("--policy"),
                        s(d.policy.as_str()),
                        s("--max-pubs"),
                        d.max_pubs.to_string(),
                    ],
                )
            }
            Role::PyFramesSub(t) => (
                self.python.clone().expect("python"),
                vec![
                    self.py_script_arg(),
                    s("fsub"),
                    self.topic_name(t),
                    s(self.topics[t].policy.as_str()),
                    s(shmbus_core::layout::short_type_name::<ChaosFrame>()),
                ],
            ),
            Role::Gc => (
                self.exe.clone(),
                vec![s("worker"), s("gc"), s("--prefix"), self.prefix.clone()],
            ),
            Role::PyTopicSub(t) | Role::PyTopicPub(t) => {
                let d = &self.topics[t];
                let mut a = vec![
                    self.py_script_arg(),
                    s(if matches!(role, Role::PyTopicSub(_)) {
                        "sub"
                    } else {
                        "pub"
                    }),
                    self.topic_name(t),
                    s(d.policy.as_str()),
                    d.max_pubs.to_string(),
                ];
                if matches!(role, Role::PyTopicPub(_)) {
                    a.push(id.to_string());
                }
                (
                    self.python.clone().expect("python slots only with python"),
                    a,
                )
            }
            Role::PyQueueGet(q) => (
                self.python.clone().expect("python"),
                vec![
                    self.py_script_arg(),
                    s("qget"),
                    self.queue_name(q),
                    s("refuse-some"),
                ],
            ),
            Role::PyLock => (
                self.python.clone().expect("python"),
                vec![
                    self.py_script_arg(),
                    s("lock"),
                    self.name("lock"),
                    id.to_string(),
                ],
            ),
            Role::PyAdd => (
                self.python.clone().expect("python"),
                vec![
                    self.py_script_arg(),
                    s("add"),
                    self.name("adds"),
                    id.to_string(),
                ],
            ),
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("SHMBUS_TEST_PARENT", std::process::id().to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts a process in `slot`.
    fn spawn(&mut self, slot: usize) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut child = self
            .command(slot, id)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.slots[slot].label))?;
        let w = self.workers.len();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((w, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((w, None));
        });
        let err = Arc::new(StdMutex::new(String::new()));
        {
            let err = Arc::clone(&err);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut e) = err.lock() {
                        // Keep the end: that is where a failure is.
                        if e.len() > 4000 {
                            let cut = e.len() - 2000;
                            let cut = (cut..e.len()).find(|&i| e.is_char_boundary(i)).unwrap_or(0);
                            e.drain(..cut);
                        }
                        e.push_str(&line);
                        e.push('\n');
                    }
                }
            });
        }
        let now = monotonic_ns();
        self.workers.push(Worker {
            id,
            slot,
            pid: child.id(),
            stdin: child.stdin.take(),
            child: Some(child),
            spawned_ns: now,
            spawned: Instant::now(),
            ready_ns: None,
            last_line: Instant::now(),
            end: End::Running,
            ended_ns: 0,
            eof: false,
            final_line: None,
            error: None,
            prog: 0,
            reports: vec![(now, 0)],
            pauses: Vec::new(),
            paused_until: None,
            holes: 0,
            baddesc: 0,
            joinlag: 0,
            hangs: Vec::new(),
            stderr: err,
        });
        self.slots[slot].live = Some(w);
        self.slots[slot].started += 1;
        Ok(())
    }

    fn on_line(&mut self, w: usize, raw: &str) {
        let l = Line::parse(raw);
        let role = self.slots[self.workers[w].slot].role;
        let worker = &mut self.workers[w];
        worker.last_line = Instant::now();
        match l.tag.as_str() {
            "ready" => worker.ready_ns = Some(field(&l, "ns").unwrap_or_else(monotonic_ns)),
            "prog" | "final" => {
                let key = [
                    "sent", "put", "done", "added", "updates", "received", "got", "rounds",
                ]
                .into_iter()
                .find_map(|k| field(&l, k));
                if let Some(n) = key {
                    worker.prog = worker.prog.max(n);
                    if role.topic_pub().is_some() {
                        let ns = field(&l, "ns").unwrap_or_else(monotonic_ns);
                        worker.reports.push((ns, n));
                    }
                }
                if l.tag == "final" {
                    worker.final_line = Some(l);
                }
            }
            "viol" => {
                let n = field(&l, "n").unwrap_or(1);
                match l.fields.get("kind").map(String::as_str) {
                    Some("lost") => self.t.v.lost += n,
                    Some("dup") => self.t.v.duplicated += n,
                    _ => self.t.v.corrupted += n,
                }
                let label = self.slots[self.workers[w].slot].label.clone();
                self.t
                    .note(format!("{label} (worker {}): {raw}", self.workers[w].id));
            }
            "hole" => worker.holes += field(&l, "n").unwrap_or(1),
            "baddesc" => worker.baddesc += field(&l, "n").unwrap_or(1),
            "joinlag" => worker.joinlag += field(&l, "n").unwrap_or(1),
            "hang" => {
                let (s, e) = (
                    field(&l, "start_ns").unwrap_or(0),
                    field(&l, "end_ns").unwrap_or(u64::MAX),
                );
                worker.hangs.push((s, e, raw.to_owned()));
            }
            "got" => {
                if let Some(q) = role.queue_get() {
                    match (field(&l, "p"), field(&l, "i"), field(&l, "d")) {
                        (Some(p), Some(i), Some(d)) => {
                            let ok = l.fields.get("ok").is_some_and(|v| v == "true");
                            self.accounts[q].sighting(p, i, d as u32, ok);
                        }
                        _ => self.t.v.corrupted += 1,
                    }
                }
            }
            "recovered" => {
                self.t.recoveries.push(Recovery {
                    dead: field(&l, "dead").unwrap_or(u64::MAX),
                    gap: field(&l, "gap").unwrap_or(u64::MAX),
                });
            }
            "error" => worker.error = Some(raw.to_owned()),
            _ => {}
        }
    }

    /// Reads every line that arrived, without waiting more than `wait`.
    fn pump(&mut self, wait: Duration) {
        let mut first = true;
        loop {
            let got = if first {
                self.rx.recv_timeout(wait).ok()
            } else {
                self.rx.try_recv().ok()
            };
            first = false;
            match got {
                Some((w, Some(line))) => self.on_line(w, &line),
                Some((w, None)) => self.workers[w].eof = true,
                None => return,
            }
        }
    }

    /// Bookkeeping of a worker that is gone, whatever the way.
    fn ended(&mut self, w: usize, end: End) {
        let now = monotonic_ns();
        let worker = &mut self.workers[w];
        worker.end = end;
        worker.ended_ns = now;
        worker.stdin = None;
        if let Some((_, start)) = worker.paused_until.take() {
            worker.pauses.push((start, now));
        }
        let slot = worker.slot;
        if self.slots[slot].live == Some(w) {
            self.slots[slot].live = None;
        }
        if matches!(end, End::Killed | End::KilledHung) {
            let role = self.slots[slot].role;
            *self.kills_by_role.entry(role_kind(role)).or_default() += 1;
            if let Some(t) = role.topic_pub() {
                self.pub_kills[t].push(now);
            }
            match role {
                Role::QueueGet { queue, copy: true } => self.accounts[queue].copy_kills += 1,
                Role::Lock | Role::PyLock => {
                    self.killed_lock_tags.insert(self.workers[w].id);
                }
                _ => {}
            }
        }
    }

    fn kill(&mut self, w: usize, end: End) {
        let worker = &mut self.workers[w];
        if let Some(mut child) = worker.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.ended(w, end);
    }

    /// Reaps workers that exited by themselves; during the chaos phase they are replaced.
    fn reap(&mut self, replace: bool) -> Result<(), String> {
        for w in 0..self.workers.len() {
            if !self.workers[w].live() {
                continue;
            }
            let status = match self.workers[w].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(s))) => s,
                _ => continue,
            };
            self.workers[w].child = None;
            // Collect what it printed last.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.workers[w].eof && Instant::now() < deadline {
                self.pump(Duration::from_millis(5));
            }
            self.ended(w, End::Exited(status));
            let slot = self.workers[w].slot;
            if replace {
                self.judge_failure(w);
                self.spawn(slot)?;
            }
        }
        Ok(())
    }

    /// A worker that ended without being told to, or told to and failed.
    fn judge_failure(&mut self, w: usize) {
        let worker = &self.workers[w];
        if worker.graceful() {
            return;
        }
        let label = &self.slots[worker.slot].label;
        let err = worker.error.clone();
        let stderr = worker.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        let what = format!(
            "{label} (worker {}, pid {}) ended {:?}: {} stderr: {tail}",
            worker.id,
            worker.pid,
            worker.end,
            err.as_deref().unwrap_or("no error line")
        );
        let join = err.as_deref().is_some_and(|e| e.contains("code=join"));
        if join {
            self.t.hangs += 1;
        } else {
            self.t.v.corrupted += 1;
        }
        self.t.note(what);
    }

    fn signal(&self, w: usize, sig: Signal) {
        let pid = self.workers[w].pid;
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    fn fire(&mut self, e: Event) -> Result<(), String> {
        let Some(w) = self.slots[e.slot].live else {
            return Ok(());
        };
        match e.action {
            Action::Kill => {
                self.kill(w, End::Killed);
                self.t.kills += 1;
                self.spawn(e.slot)?;
            }
            Action::Pause { ms } => {
                let until = Instant::now() + Duration::from_millis(ms);
                let worker = &mut self.workers[w];
                match &mut worker.paused_until {
                    Some((u, _)) => *u = (*u).max(until),
                    None => {
                        let now = monotonic_ns();
                        self.signal(w, Signal::STOP);
                        self.workers[w].paused_until = Some((until, now));
                        self.t.stops += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// SIGCONT to pauses that are over (all of them with `all`).
    fn resume(&mut self, all: bool) {
        let now = Instant::now();
        for w in 0..self.workers.len() {
            if let Some((until, start)) = self.workers[w].paused_until {
                if all || until <= now {
                    self.signal(w, Signal::CONT);
                    let worker = &mut self.workers[w];
                    worker.paused_until = None;
                    worker.pauses.push((start, monotonic_ns()));
                    worker.last_line = Instant::now();
                }
            }
        }
    }

    /// Live workers that are silent for too long (not paused) are hung: killed and replaced.
    fn watch(&mut self, replace: bool) -> Result<(), String> {
        for w in 0..self.workers.len() {
            let worker = &self.workers[w];
            if !worker.live() || worker.paused_until.is_some() {
                continue;
            }
            let stalled = if worker.ready_ns.is_some() {
                worker.last_line.elapsed() > STALL
            } else {
                worker.spawned.elapsed() > STARTUP
            };
            if stalled {
                let label = self.slots[worker.slot].label.clone();
                let what = format!(
                    "{label} (worker {}, pid {}) silent for {:?} ({}): killed",
                    worker.id,
                    worker.pid,
                    worker.last_line.elapsed(),
                    if worker.ready_ns.is_some() {
                        "after ready"
                    } else {
                        "never ready"
                    }
                );
                self.t.hangs += 1;
                self.t.note(what);
                self.kill(w, End::KilledHung);
                if replace {
                    let slot = self.workers[w].slot;
                    self.spawn(slot)?;
                }
            }
        }
        Ok(())
    }

    fn live_where(&self, pick: impl Fn(Role) -> bool) -> Vec<usize> {
        self.slots
            .iter()
            .filter(|s| pick(s.role))
            .filter_map(|s| s.live)
            .collect()
    }

    /// Asks `ws` to finish (`quit`), and waits (bounded) for them to exit; those still there
    /// then are hung (killed).
    fn quit_and_wait(&mut self, ws: &[usize], tell: bool) {
        if tell {
            for &w in ws {
                if let Some(mut stdin) = self.workers[w].stdin.take() {
                    let _ = writeln!(stdin, "quit").and_then(|()| stdin.flush());
                }
            }
        }
        let deadline = Instant::now() + SHUTDOWN_STEP;
        loop {
            self.pump(Duration::from_millis(5));
            let _ = self.reap(false);
            if ws.iter().all(|&w| !self.workers[w].live()) || Instant::now() > deadline {
                break;
            }
        }
        for &w in ws {
            if self.workers[w].live() {
                let label = self.slots[self.workers[w].slot].label.clone();
                self.t.hangs += 1;
                self.t.note(format!(
                    "{label} (worker {}) did not finish within {SHUTDOWN_STEP:?} of being told to",
                    self.workers[w].id
                ));
                self.kill(w, End::KilledHung);
            } else {
                self.judge_failure(w);
            }
        }
        // Their last lines.
        let deadline = Instant::now() + Duration::from_secs(2);
        while ws.iter().any(|&w| !self.workers[w].eof) && Instant::now() < deadline {
            self.pump(Duration::from_millis(5));
        }
    }

    /// The whole run; returns the report's figures.
    pub(crate) fn run(&mut self) -> Result<(), String> {
        let o = &self.opts;
        println!(
            "chaos: seed {} kills {} duration {:.1}s prefix {} python: {}",
            o.seed,
            o.kills,
            o.duration.as_secs_f64(),
            self.prefix,
            self.python_note
        );
        self.setup()?;
        for slot in 0..self.slots.len() {
            self.spawn(slot)?;
        }
        // Everyone ready before the chaos starts (a start-up hang is found by `watch`).
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline
            && self
                .workers
                .iter()
                .any(|w| w.live() && w.ready_ns.is_none())
        {
            self.pump(Duration::from_millis(10));
            self.reap(true)?;
        }
        let weights: Vec<u32> = self
            .slots
            .iter()
            .map(|s| {
                if s.role.is_python() {
                    PY_WEIGHT
                } else {
                    RUST_WEIGHT
                }
            })
            .collect();
        let duration_ms = self.opts.duration.as_millis() as u64;
        let events = schedule(self.opts.seed, self.opts.kills, duration_ms, &weights);
        println!(
            "chaos: {} processes in {} slots; {} events scheduled",
            self.workers.len(),
            self.slots.len(),
            events.len()
        );
        let start = Instant::now();
        let mut next = 0;
        let mut last_status = Instant::now();
        while next < events.len() || start.elapsed() < self.opts.duration {
            self.pump(Duration::from_millis(1));
            let now_ms = start.elapsed().as_millis() as u64;
            while next < events.len() && events[next].at_ms <= now_ms {
                self.fire(events[next])?;
                next += 1;
            }
            self.resume(false);
            self.reap(true)?;
            self.watch(true)?;
            if last_status.elapsed() > Duration::from_secs(30) {
                last_status = Instant::now();
                println!(
                    "chaos: {:.0}s: {} kills, {} stops, {} processes so far; hangs {} lost {} duplicated {} corrupted {}",
                    start.elapsed().as_secs_f64(),
                    self.t.kills,
                    self.t.stops,
                    self.workers.len(),
                    self.t.hangs,
                    self.t.v.lost,
                    self.t.v.duplicated,
                    self.t.v.corrupted
                );
            }
        }
        self.resume(true);
        println!(
            "chaos: schedule done in {:.1}s; stopping in order",
            start.elapsed().as_secs_f64()
        );
        self.shutdown();
        self.account();
        self.collect();
        Ok(())
    }

    fn shutdown(&mut self) {
        let producers = self.live_where(Role::is_producer);
        self.quit_and_wait(&producers, true);
        let subs = self.live_where(|r| r.topic_sub().is_some());
        self.quit_and_wait(&subs, true);
        if let Some(held) = &self.held {
            for q in &held.queues {
                q.reclaim_dead();
                if let Err(e) = q.close() {
                    self.t.v.corrupted += 1;
                    self.t.note(format!("closing a queue: {e}"));
                }
            }
        }
        let consumers = self.live_where(|r| r.queue_get().is_some());
        self.quit_and_wait(&consumers, false);
    }

    /// Everything that needs the whole run: survivors against publishers, holes and bad
    /// descriptors against kills, hangs against pauses, queues, lock, values.
    fn account(&mut self) {
        // Hangs: excused when the worker itself was paused meanwhile.
        for w in &self.workers {
            for (s, e, raw) in &w.hangs {
                if w.pauses.iter().any(|&(ps, pe)| ps <= *e && pe >= *s) {
                    self.t.excused_hangs += 1;
                } else {
                    self.t.hangs += 1;
                    let label = &self.slots[w.slot].label;
                    let note = format!("{label} (worker {}): {raw}", w.id);
                    if self.t.notes.len() < 40 {
                        self.t.notes.push(note);
                    }
                }
            }
        }
        // Topics.
        for w in 0..self.workers.len() {
            let worker = &self.workers[w];
            let role = self.slots[worker.slot].role;
            let Some(t) = role.topic_sub() else { continue };
            self.t.joinlags += worker.joinlag;
            let born = worker.spawned_ns;
            let died = if worker.ended_ns == 0 {
                u64::MAX
            } else {
                worker.ended_ns
            };
            let kills_in_life = self.pub_kills[t]
                .iter()
                .filter(|&&k| k >= born && k <= died)
                .count() as u64;
            let mut lost = worker.holes.saturating_sub(kills_in_life);
            if worker.baddesc > 0 && kills_in_life == 0 {
                lost += worker.baddesc;
            }
            if lost > 0 {
                let label = &self.slots[worker.slot].label;
                self.t.notes.push(format!(
                    "{label} (worker {}): {} holes and {} bad descriptors with {kills_in_life} publisher kills in its life",
                    worker.id, worker.holes, worker.baddesc
                ));
            }
            self.t.v.lost += lost;
            // A survivor: lived from its start to the end and drained.
            if worker.killed() || !worker.graceful() {
                continue;
            }
            let Some(fin) = &worker.final_line else {
                continue;
            };
            let Some(seen) = fin.fields.get("producers").and_then(|s| parse_seen(s)) else {
                self.t.v.corrupted += 1;
                continue;
            };
            let policy = self.topics[t].policy;
            let joined = worker.ready_ns.unwrap_or(u64::MAX);
            let mut missing_total = 0;
            let mut beyond_total = 0;
            for p in &self.workers {
                if self.slots[p.slot].role.topic_pub() != Some(t) {
                    continue;
                }
                let life = ProducerLife {
                    sent: p.prog,
                    graceful: p.graceful(),
                };
                let from = first_index_after(&p.reports, joined).unwrap_or(u64::MAX);
                let (missing, beyond) =
                    survivor_shortfall(policy, seen.get(&p.id).copied(), from, &life);
                if missing + beyond > 0 && self.t.notes.len() < 40 {
                    let label = &self.slots[worker.slot].label;
                    self.t.notes.push(format!(
                        "{label} (worker {}) lived to the end: of publisher {} (sent {}, graceful {}) it saw {:?}, from {from}: missing {missing}, beyond {beyond}",
                        worker.id, p.id, life.sent, life.graceful, seen.get(&p.id)
                    ));
                }
                missing_total += missing;
                beyond_total += beyond;
            }
            self.t.v.lost += missing_total;
            self.t.v.corrupted += beyond_total;
        }
        let Some(held) = self.held.take() else { return };
        // Queues: what producers reported, what the conductor drains, the queue's counters.
        for w in &self.workers {
            if let Role::QueuePut(q) = self.slots[w.slot].role {
                self.accounts[q].reported_put(w.id, w.prog, w.graceful());
            }
        }
        for (i, q) in held.queues.iter().enumerate() {
            q.reclaim_dead();
            match q.drain(&mut self.accounts[i]) {
                Ok(n) if n > 0 => println!(
                    "chaos: {}: the conductor drained {n} items left",
                    self.queues[i].label
                ),
                Ok(_) => {}
                Err(e) => {
                    self.t.v.corrupted += 1;
                    self.t
                        .note(format!("draining {}: {e}", self.queues[i].label));
                }
            }
            let st = q.stats();
            let (v, seen, unseen) = self.accounts[i].finish(&st);
            println!(
                "chaos: {}: put {} taken {} done {} lost {} redelivered {} dead-lettered {} abandoned {} repairs {}; items seen {seen}, reported and unseen {unseen}, copy-consumer kills {}: {v:?}",
                self.queues[i].label,
                st.put,
                st.taken,
                st.done,
                st.lost,
                st.redelivered,
                st.dead_lettered,
                st.abandoned,
                st.repairs,
                self.accounts[i].copy_kills
            );
            if v != Verdict::default() {
                self.t
                    .note(format!("{}: {v:?} (stats {st:?})", self.queues[i].label));
            }
            self.t.v += v;
            self.t.redelivered += st.redelivered;
        }
        // The lock: a final takeover if the last holder died, then the counters.
        let reported = |pick: &dyn Fn(Role) -> bool| -> (u64, u64) {
            let mut sum = 0;
            let mut kills = 0;
            for w in &self.workers {
                if pick(self.slots[w.slot].role) {
                    sum += w.prog;
                    kills += u64::from(w.killed());
                }
            }
            (sum, kills)
        };
        let [ca, cb, ch] = &held.lock_values;
        match held.mutex.lock_timeout(Duration::from_secs(5)) {
            Ok(mut g) => {
                let (x, y, h) = (
                    ca.load().unwrap_or(0),
                    cb.load().unwrap_or(0),
                    ch.load().unwrap_or(0),
                );
                if g.owner_died() {
                    self.t.recoveries.push(Recovery {
                        dead: h,
                        gap: x.wrapping_sub(y),
                    });
                    let _ = cb.store(x);
                    let _ = ch.store(0);
                    g.mark_consistent();
                } else if x != y || h != 0 {
                    self.t.v.corrupted += 1;
                    self.t.note(format!(
                        "the lock's counters at the end: a {x} b {y} holder {h}"
                    ));
                }
                let (done, lock_kills) = reported(&|r| matches!(r, Role::Lock | Role::PyLock));
                let (lost, _) = counter_verdict(x, done, u64::MAX);
                if lost > 0 {
                    self.t.note(format!(
                        "the lock's counter is {x}, holders reported {done} updates"
                    ));
                }
                self.t.v.lost += lost;
                let bad = lock_verdict(&self.t.recoveries, &self.killed_lock_tags, lock_kills);
                if bad > 0 {
                    self.t.note(format!(
                        "lock recoveries {:?} against {lock_kills} kills of holders {:?}",
                        self.t.recoveries, self.killed_lock_tags
                    ));
                }
                self.t.v.corrupted += bad;
                println!(
                    "chaos: lock: {x} updates (holders reported {done}), {} owner-died recoveries, {lock_kills} holders killed",
                    self.t.recoveries.len()
                );
            }
            Err(e) => {
                self.t.hangs += 1;
                self.t.note(format!(
                    "the conductor could not take the lock at the end: {e}"
                ));
            }
        }
        // Values.
        let (added, add_kills) = reported(&|r| matches!(r, Role::Add | Role::PyAdd));
        let adds = held.adds.load().unwrap_or(0);
        let (lost, dup) = counter_verdict(adds, added, add_kills * ADD_BATCH);
        println!("chaos: value: {adds} adds (adders reported {added}, {add_kills} adders killed)");
        let (upd, words_kills) = reported(&|r| r == Role::Words);
        let words = held.words.load().map(|w| w[0]).unwrap_or(0);
        let (l2, d2) = counter_verdict(words, upd, words_kills * (UPDATE_BATCH + 1));
        match held.words.load() {
            Ok(w) if w.iter().all(|&x| x == w[0]) => {}
            other => {
                self.t.v.corrupted += 1;
                self.t
                    .note(format!("the locked value at the end: {other:?}"));
            }
        }
        println!(
            "chaos: locked value: {words} updates (writers reported {upd}, {words_kills} killed)"
        );
        let (upd_s, shared_kills) = reported(&|r| r == Role::SharedState);
        let tally = match held.shared.load() {
            Ok((t, _)) if t.is_complete() => t.n,
            other => {
                self.t.v.corrupted += 1;
                self.t
                    .note(format!("the shared state at the end: {other:?}"));
                0
            }
        };
        let (l3, d3) = counter_verdict(tally, upd_s, shared_kills * (UPDATE_BATCH + 1));
        println!("chaos: shared state: {tally} updates (writers reported {upd_s}, {shared_kills} killed)");
        for (what, lost, dup) in [
            ("adds", lost, dup),
            ("locked value", l2, d2),
            ("shared state", l3, d3),
        ] {
            if lost + dup > 0 {
                self.t.note(format!("{what}: lost {lost} duplicated {dup}"));
            }
            self.t.v.lost += lost;
            self.t.v.duplicated += dup;
        }
        // The array is intact.
        match SharedArray::<u64>::attach_read_only(&self.name("array")) {
            Ok(a) => {
                let bad = a
                    .to_vec()
                    .iter()
                    .enumerate()
                    .filter(|&(i, &x)| x != array_word(i))
                    .count();
                if bad > 0 {
                    self.t.v.corrupted += 1;
                    self.t
                        .note(format!("the persistent array has {bad} words changed"));
                }
            }
            Err(e) => {
                self.t.v.corrupted += 1;
                self.t.note(format!(
                    "the persistent array could not be attached at the end: {e}"
                ));
            }
        }
        drop(held);
    }

    /// After every process exited and the conductor let go: gc under the run's prefix, then
    /// whatever scoped segment is left is leaked. Removes everything of the run.
    fn collect(&mut self) {
        self.kill_all();
        match shmbus_core::segment::gc_report_prefix(&self.prefix, false) {
            Ok(r) => {
                self.t.stale_collected = r.removed.len() as u64;
                for u in &r.unreadable {
                    self.t.note(format!("unreadable after the run: {u:?}"));
                }
            }
            Err(e) => self.t.note(format!("gc: {e}")),
        }
        for (name, lifetime) in self.leftovers() {
            match lifetime {
                Some(Lifetime::Persistent) if name == self.name("array") => {}
                _ => {
                    self.t.leaked += 1;
                    self.t.note(format!("left after gc: {name} ({lifetime:?})"));
                }
            }
        }
        remove_files(&self.prefix);
    }

    /// Segment names of this run still in `/dev/shm`, with their lifetime if readable.
    fn leftovers(&self) -> Vec<(String, Option<Lifetime>)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(shmbus_core::segment::SHM_DIR) else {
            return out;
        };
        let file_prefix = format!("{}{}", shmbus_core::name::FILE_PREFIX, self.prefix);
        for e in dir.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file
                .strip_prefix(shmbus_core::name::FILE_PREFIX)
                .filter(|_| file.starts_with(&file_prefix))
            {
                let lifetime = Name::new(name)
                    .ok()
                    .and_then(|n| shmbus_core::segment::peek(&n).ok())
                    .map(|i| i.lifetime);
                out.push((name.to_owned(), lifetime));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn kill_all(&mut self) {
        self.resume(true);
        for w in 0..self.workers.len() {
            if self.workers[w].live() {
                self.kill(w, End::KilledHung);
            }
        }
    }

    /// Prints the report and writes the JSON; returns whether the run is clean.
    pub(crate) fn report(&self) -> bool {
        let t = &self.t;
        println!("chaos: processes started per slot:");
        for s in &self.slots {
            println!("  {:<28} {}", s.label, s.started);
        }
        let mut by_role: Vec<_> = self.kills_by_role.iter().collect();
        by_role.sort();
        println!("chaos: kills by role: {by_role:?}");
        // What each kind of process did (messages received or sent, items put or got, lock
        // rounds, adds, updates, attachments, gc rounds, joins), summed over its processes.
        let mut work: Vec<(&str, u64, u64)> = Vec::new();
        for w in &self.workers {
            let kind = role_kind(self.slots[w.slot].role);
            match work.iter_mut().find(|(k, _, _)| *k == kind) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += w.prog;
                }
                None => work.push((kind, 1, w.prog)),
            }
        }
        work.sort();
        for (kind, n, done) in work {
            println!("  {kind:<28} {n:>6} processes {done:>12} done");
        }
        println!(
            "chaos: {} processes in all; {} hang reports excused (the process itself was paused); {} join lags (back-pressure join window); {} stale segments removed by gc",
            self.workers.len(),
            t.excused_hangs,
            t.joinlags,
            t.stale_collected
        );
        for n in &t.notes {
            println!("chaos: finding: {n}");
        }
        if t.notes_left_off > 0 {
            println!("chaos: ... {} more findings left off", t.notes_left_off);
        }
        let json = serde_json::json!({
            "kills": t.kills,
            "stops": t.stops,
            "hangs": t.hangs,
            "lost": t.v.lost,
            "duplicated": t.v.duplicated,
            "corrupted": t.v.corrupted,
            "leaked_segments": t.leaked,
            "owner_died_recovered": t.recoveries.len(),
            "redelivered": t.redelivered,
        });
        // The JSON has exactly the nine figures; whether Python processes took part is said
        // here, on every run (never silently skipped).
        println!("chaos: python: {}", self.python_note);
        let text = serde_json::to_string_pretty(&json).expect("json");
        println!("{text}");
        if let Some(path) = &self.opts.json {
            if let Err(e) = std::fs::write(path, format!("{text}\n")) {
                eprintln!("chaos: writing {}: {e}", path.display());
                return false;
            }
        }
        t.hangs + t.v.lost + t.v.duplicated + t.v.corrupted + t.leaked == 0
    }
}

/// Removes every `/dev/shm` file of the run.
fn remove_files(prefix: &str) {
    let file_prefix = format!("{}{prefix}", shmbus_core::name::FILE_PREFIX);
    if let Ok(dir) = std::fs::read_dir(shmbus_core::segment::SHM_DIR) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&file_prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for Run {
    /// On any way out (an error, a panic): no process and no file of the run is left.
    fn drop(&mut self) {
        self.held = None;
        self.kill_all();
        remove_files(&self.prefix);
        if let Some(p) = &self.py_script {
            let _ = std::fs::remove_file(p);
        }
    }
}

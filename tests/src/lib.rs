//! Helpers shared by the multi-process tests and by their peer binary (`shmbus-test-peer`).
//!
//! - [`Scope`]: one per test. Hands out unique names, spawns peer processes, and on drop kills
//!   and reaps every child it spawned, then removes every `/dev/shm` file it handed out a name
//!   for, so that a failing test leaves `/dev/shm` as it found it.
//! - [`Peer`]: a running `shmbus-test-peer` with bounded waits on its output lines.
//! - The message types both sides agree on ([`Msg`], [`Rec`]) and their integrity checks.
//! - [`GcLock`]: keeps `gc()` from running while another test needs a stale file to stay.
//!
//! The named mutex of the tests is the library's own, `shmbus::Mutex<u64>`; like everything
//! else here it needs no `unsafe`.
//!
//! # No silent skips
//!
//! A test never passes without having done its job. As root (as in CI) every test runs in
//! full: another user is `nobody`, in a child process that drops to it
//! ([`Scope::spawn_as_nobody`]); a private or small `/dev/shm` is a tmpfs in a mount namespace
//! of a child process, never of the test process ([`ShmEnv`]). Not as root, a private
//! `/dev/shm` comes from a user namespace where the kernel allows them, and the tests that can
//! do their job another way do so (e.g. `gc()` in the machine's `/dev/shm` under [`GcLock`]).
//!
//! A test that still cannot do its job here (it needs a second user, or no namespace can be
//! made) calls [`require_root`] or [`skip_or_fail`]: that **fails** the test, saying why,
//! unless `SHMBUS_ALLOW_SKIP=1` is set; then it prints a line `SKIPPED: <test>: <why>` and the
//! test returns without checking anything. Set the variable only where such a skip is accepted,
//! and look for the lines, e.g. `cargo nextest run --success-output final 2>&1 | grep SKIPPED:`.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmbus::{OpenError, TopicError};
use shmbus_core::segment::SegmentError;

/// The bound on one step of a test (a peer getting ready, a peer exiting after it was told to).
pub const STEP: Duration = Duration::from_secs(5);

/// The bound on a bulk transfer of thousands of messages between processes.
pub const BULK: Duration = Duration::from_secs(20);

/// `Scope::new` with the path of the peer binary (only integration tests know it).
#[macro_export]
macro_rules! scope {
    ($test:expr) => {
        $crate::Scope::new(env!("CARGO_BIN_EXE_shmbus-test-peer"), $test)
    };
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// The plain-old-data message of the tests: 64 bytes whose every word is derived from
/// `(producer, index)` and covered by a checksum, so a torn or stale read is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Msg {
    /// The publisher's own counter (0, 1, 2, ... for each publisher process).
    pub index: u64,
    /// Who published it (the publisher's pid).
    pub producer: u64,
    /// Words derived from `index` and `producer`.
    pub data: [u64; 5],
    /// Mix of every word above.
    pub checksum: u64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills `out` with the verifiable contents of array item `index` of `producer` (array queues
/// and topics): every element depends on the three.
pub fn fill_array(producer: u64, index: u64, out: &mut [u32]) {
    let seed = mix(producer << 40 ^ index);
    for (i, x) in out.iter_mut().enumerate() {
        *x = (seed ^ i as u64) as u32;
    }
}

/// Whether `data` is exactly what [`fill_array`] writes for `(producer, index)`.
pub fn array_is_intact(producer: u64, index: u64, data: &[u32]) -> bool {
    let seed = mix(producer << 40 ^ index);
    data.iter()
        .enumerate()
        .all(|(i, &x)| x == (seed ^ i as u64) as u32)
}

/// The checksum of a test message: its index, its producer (salted per type) and its words.
fn checksum(index: u64, salted_producer: u64, data: &[u64]) -> u64 {
    data.iter()
        .fold(mix(index) ^ mix(salted_producer), |h, &d| mix(h ^ d))
}

impl Msg {
    /// The message `index` of `producer`.
    pub fn new(producer: u64, index: u64) -> Msg {
        let mut m = Msg {
            index,
            producer,
            data: [0; 5],
            checksum: 0,
        };
        for (i, d) in m.data.iter_mut().enumerate() {
            *d = mix(index ^ producer.rotate_left(17) ^ (i as u64).rotate_left(40));
        }
        m.checksum = m.compute_checksum();
        m
    }

    fn compute_checksum(&self) -> u64 {
        checksum(self.index, self.producer.wrapping_add(1), &self.data)
    }

    /// Whether every word is what [`Msg::new`] wrote.
    pub fn is_intact(&self) -> bool {
        *self == Msg::new(self.producer, self.index) && self.checksum == self.compute_checksum()
    }
}

/// Same size as [`Msg`] but another type name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct OtherMsg {
    /// Words.
    pub words: [u64; 8],
}

/// A 48-byte plain-old-data message, small enough to ride in its ring entry (what a copying
/// receive then reads instead of the slot), checked like [`Msg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct CompactMsg {
    /// The publisher's own counter.
    pub index: u64,
    /// Who published it.
    pub producer: u64,
    /// Words derived from `index` and `producer`.
    pub data: [u64; 3],
    /// Mix of every word above.
    pub checksum: u64,
}

impl CompactMsg {
    /// The message `index` of `producer`: the first words of [`Msg::new`]'s, its own checksum.
    pub fn new(producer: u64, index: u64) -> CompactMsg {
        let m = Msg::new(producer, index);
        let mut c = CompactMsg {
            index,
            producer,
            data: [m.data[0], m.data[1], m.data[2]],
            checksum: 0,
        };
        c.checksum = c.compute_checksum();
        c
    }

    fn compute_checksum(&self) -> u64 {
        checksum(self.index, self.producer.wrapping_add(2), &self.data)
    }

    /// Whether every word is what [`CompactMsg::new`] wrote.
    pub fn is_intact(&self) -> bool {
        *self == CompactMsg::new(self.producer, self.index)
    }
}

/// A smaller plain-old-data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct SmallMsg {
    /// A word.
    pub value: u32,
}

/// The serde message of the tests: a string and a vector whose contents follow from `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rec {
    /// The publisher's own counter.
    pub index: u64,
    /// Who published it.
    pub producer: u64,
    /// A string of varying length.
    pub label: String,
    /// A vector of varying length.
    pub values: Vec<u32>,
}

impl Rec {
    /// The record `index` of `producer`.
    pub fn new(producer: u64, index: u64) -> Rec {
        let label = format!("rec-{index}-{}", "é".repeat((index % 13) as usize));
        let values = (0..(index % 29) as u32)
            .map(|i| (mix(index ^ u64::from(i)) >> 32) as u32)
            .collect();
        Rec {
            index,
            producer,
            label,
            values,
        }
    }

    /// Whether it is exactly what [`Rec::new`] made.
    pub fn is_intact(&self) -> bool {
        *self == Rec::new(self.producer, self.index)
    }
}

/// A name for an error, printed by the peer and checked by the tests.
pub fn open_error_code(e: &OpenError) -> &'static str {
    #[allow(unreachable_patterns)]
    match e {
        OpenError::Name(_) => "name",
        OpenError::UnsupportedType { .. } => "unsupported-type",
        OpenError::Segment(s) => segment_error_code(s),
        OpenError::Topic(TopicError::Segment(s)) => segment_error_code(s),
        OpenError::Topic(TopicError::Qos { .. }) => "qos",
        OpenError::Topic(TopicError::Config(_)) => "config",
        OpenError::Topic(TopicError::Corrupt { .. }) => "topic-corrupt",
        OpenError::Topic(TopicError::TooManyPublishers { .. }) => "too-many-publishers",
        OpenError::Topic(TopicError::TooManySubscribers { .. }) => "too-many-subscribers",
        OpenError::Topic(TopicError::Os { .. }) => "os",
        _ => "other",
    }
}

/// A name for a segment error.
pub fn segment_error_code(e: &SegmentError) -> &'static str {
    #[allow(unreachable_patterns)]
    match e {
        SegmentError::NotFound(_) => "not-found",
        SegmentError::AlreadyExists(_) => "already-exists",
        SegmentError::OutOfSpace { .. } => "out-of-space",
        SegmentError::PermissionDenied(_) => "permission-denied",
        SegmentError::Corrupt { .. } => "corrupt",
        SegmentError::Version { .. } => "version",
        SegmentError::WrongKind { .. } => "wrong-kind",
        SegmentError::WrongType { .. } => "wrong-type",
        SegmentError::Stuck { .. } => "stuck",
        SegmentError::InvalidSize { .. } => "invalid-size",
        SegmentError::Os { .. } => "os",
        _ => "other",
    }
}

/// The shared serde state of the tests (`shmbus::Shared`): every complete update keeps
/// `twice == 2 * n` and `words` `n % 64` copies of `n`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Tally {
    /// Updates applied.
    pub n: u64,
    /// Twice `n`.
    pub twice: u64,
    /// `n % 64` copies of `n`.
    pub words: Vec<u64>,
}

impl Tally {
    /// One more update.
    pub fn bump(&mut self) {
        self.n += 1;
        self.twice = 2 * self.n;
        self.words = vec![self.n; (self.n % 64) as usize];
    }

    /// Whether it is what complete updates leave.
    pub fn is_complete(&self) -> bool {
        self.twice == 2 * self.n
            && self.words.len() as u64 == self.n % 64
            && self.words.iter().all(|&w| w == self.n)
    }
}

// ---------------------------------------------------------------------------------------------
// Output lines
// ---------------------------------------------------------------------------------------------

/// One line a peer printed: a tag, then `key=value` fields; a `msg=` field takes the rest of
/// the line.
#[derive(Debug, Clone)]
pub struct Line {
    /// The first word.
    pub tag: String,
    /// The fields.
    pub fields: HashMap<String, String>,
    /// The whole line.
    pub raw: String,
}

impl Line {
    /// Parses `raw`.
    pub fn parse(raw: &str) -> Line {
        let raw = raw.trim_end().to_owned();
        let mut rest = raw.as_str();
        let tag = match rest.split_once(' ') {
            Some((t, r)) => {
                rest = r;
                t.to_owned()
            }
            None => {
                let t = rest.to_owned();
                rest = "";
                t
            }
        };
        let mut fields = HashMap::new();
        while !rest.is_empty() {
            let (word, next) = rest.split_once(' ').unwrap_or((rest, ""));
            if word.starts_with("msg=") {
                fields.insert("msg".to_owned(), rest["msg=".len()..].to_owned());
                break;
            }
            if let Some((k, v)) = word.split_once('=') {
                fields.insert(k.to_owned(), v.to_owned());
            }
            rest = next;
        }
        Line { tag, fields, raw }
    }

    /// The field `key`.
    ///
    /// # Panics
    ///
    /// If the line has no such field.
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no field {key:?} in line {:?}", self.raw))
    }

    /// The field `key` as a number.
    ///
    /// # Panics
    ///
    /// If the line has no such field or it is not a number.
    pub fn num(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse().unwrap_or_else(|_| {
            panic!(
                "field {key:?} = {v:?} is not a number in line {:?}",
                self.raw
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

type SharedChild = Rc<RefCell<Option<Child>>>;

/// A running peer process. Dropping it kills and reaps it.
#[derive(Debug)]
pub struct Peer {
    label: String,
    child: SharedChild,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Set once stderr reached its end.
    stderr_done: Arc<AtomicBool>,
    status: Option<ExitStatus>,
}

impl Peer {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the peer printed so far (stdout lines consumed and stderr), for failure messages.
    pub fn transcript(&mut self) -> String {
        // Collect stdout lines not consumed yet, without waiting.
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        let mut s = format!("--- peer {} (pid {}) ---\nstdout:\n", self.label, self.pid);
        for l in &self.seen {
            let _ = writeln!(s, "  {l}");
        }
        let err = self.stderr.lock().map(|e| e.clone()).unwrap_or_default();
        let _ = write!(s, "stderr:\n{err}");
        s
    }

    /// Waits (at most `timeout`) for the next line tagged `tag`, skipping other lines. A line
    /// tagged `error` (unless `error` is what is waited for) or the end of the output fails the
    /// test.
    pub fn expect(&mut self, tag: &str, timeout: Duration) -> Line {
        self.try_expect(tag, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Peer::expect`], returning the failure (with the transcript) instead of panicking.
    pub fn try_expect(&mut self, tag: &str, timeout: Duration) -> Result<Line, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(raw) => {
                    self.seen.push(raw.clone());
                    let line = Line::parse(&raw);
                    if line.tag == tag {
                        return Ok(line);
                    }
                    if line.tag == "error" {
                        let t = self.transcript();
                        return Err(format!(
                            "peer {} reported an error while {tag:?} was awaited: {raw}\n{t}",
                            self.label
                        ));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let t = self.transcript();
                    return Err(format!(
                        "peer {} printed no {tag:?} line within {timeout:?}\n{t}",
                        self.label
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Give stderr a moment to be collected.
                    std::thread::sleep(Duration::from_millis(50));
                    let status = self.try_status();
                    let t = self.transcript();
                    return Err(format!(
                        "peer {} ended its output ({status:?}) before a {tag:?} line\n{t}",
                        self.label
                    ));
                }
            }
        }
    }

    /// The lines printed since the last look, without waiting.
    pub fn pending(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        while let Ok(raw) = self.lines.try_recv() {
            self.seen.push(raw.clone());
            out.push(Line::parse(&raw));
        }
        out
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends one command line on the peer's standard input.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()) {
            let t = self.transcript();
            panic!("could not write {cmd:?} to peer {}: {e}\n{t}", self.label);
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.borrow_mut().as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Waits (at most `timeout`) for the peer to exit; on timeout kills it and fails the test.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if Instant::now() >= deadline {
                self.kill();
                let t = self.transcript();
                panic!(
                    "peer {} did not exit within {timeout:?} (killed it)\n{t}",
                    self.label
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (bounded) for the peer to exit, however it ends; returns how, and the lines it
    /// printed that were not consumed yet.
    pub fn wait_output(&mut self, timeout: Duration) -> (ExitStatus, Vec<Line>) {
        let status = self.wait(timeout);
        // The reader thread sees EOF once the process is gone; drain what it read.
        let mut lines = Vec::new();
        let deadline = Instant::now() + STEP;
        while let Ok(raw) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(raw.clone());
            lines.push(Line::parse(&raw));
        }
        (status, lines)
    }

    /// Waits for the peer to exit successfully (bounded) and returns its last line tagged `tag`.
    pub fn finish(&mut self, tag: &str, timeout: Duration) -> Line {
        let (status, lines) = self.wait_output(timeout);
        let last = lines.into_iter().rfind(|l| l.tag == tag);
        if !status.success() {
            let t = self.transcript();
            panic!("peer {} failed: {status}\n{t}", self.label);
        }
        match last {
            Some(l) => l,
            None => {
                let t = self.transcript();
                panic!("peer {} exited without a {tag:?} line\n{t}", self.label);
            }
        }
    }

    /// The exit status, if the process has exited (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.try_status()
    }

    /// Waits (at most `timeout`) for the peer to exit. On overrun, kills it and returns `None`
    /// instead of failing the test (for tests that count overruns as findings).
    pub fn wait_or_kill(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every stdout line printed so far. Once the process has exited, waits (at most `timeout`)
    /// for the end of its stdout and stderr, so that nothing it wrote is missed.
    pub fn drain(&mut self, timeout: Duration) -> Vec<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(raw) => self.seen.push(raw),
                Err(mpsc::TryRecvError::Disconnected)
                    if self.stderr_done.load(Ordering::Acquire) =>
                {
                    break
                }
                Err(_) => {
                    if self.try_status().is_none() || Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.seen.iter().map(|l| Line::parse(l)).collect()
    }

    /// What the peer wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the peer.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.borrow_mut().as_mut() {
            let _ = child.kill();
            if let Ok(s) = child.wait() {
                self.status = Some(s);
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin.take();
        self.kill();
    }
}

/// Everything one test made: names, processes, files. Dropping it kills and reaps every peer
/// still running, then removes the files of every name it handed out.
#[derive(Debug)]
pub struct Scope {
    exe: PathBuf,
    test: String,
    names: Vec<String>,
    files: Vec<PathBuf>,
    children: Vec<SharedChild>,
    /// The peer binary as `nobody` can run it (see [`Scope::spawn_as_nobody`]).
    nobody_exe: Option<PathBuf>,
    /// Directories to remove (recursively) when the scope drops.
    dirs: Vec<PathBuf>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Scope {
    /// A scope for the test `test`, spawning the peer binary `exe`. Use [`scope!`].
    pub fn new(exe: &str, test: &str) -> Scope {
        Scope {
            exe: PathBuf::from(exe),
            test: test.to_owned(),
            names: Vec::new(),
            files: Vec::new(),
            children: Vec::new(),
            nobody_exe: None,
            dirs: Vec::new(),
        }
    }

    /// The peer binary.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// A fresh name `t-<pid>-<n>-<test>`, whose file is removed when the scope drops.
    pub fn name(&mut self) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("t-{}-{n}-{}", std::process::id(), self.test);
        self.names.push(name.clone());
        self.files.push(shm_file(&name));
        name
    }

    /// Removes `path` too when the scope drops.
    pub fn track_file(&mut self, path: PathBuf) {
        self.files.push(path);
    }

    /// Spawns the peer with `args`.
    pub fn spawn(&mut self, label: &str, args: &[&str]) -> Peer {
        self.spawn_with(label, args, |_| {})
    }

    /// Spawns the peer with `args`, letting `adjust` change the command first (e.g. its user).
    pub fn spawn_with(
        &mut self,
        label: &str,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Peer {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args);
        adjust(&mut cmd);
        self.spawn_command(label, args, cmd)
    }

    /// Spawns the peer with `args` as the user `nobody` (see [`nobody`]), in `/`. Needs root.
    ///
    /// If `nobody` cannot run the peer binary where it is (e.g. under a 0700 directory), runs a
    /// copy in a fresh directory of mode 0755 instead, removed when the scope drops.
    ///
    /// # Panics
    ///
    /// If not root, or if `nobody` can run neither the binary nor a copy of it.
    pub fn spawn_as_nobody(&mut self, label: &str, args: &[&str]) -> Peer {
        assert!(is_root(), "only root can run a process as nobody");
        let exe = self.exe_for_nobody();
        let (uid, gid) = nobody();
        let mut cmd = Command::new(exe);
        cmd.args(args).uid(uid).gid(gid).current_dir("/");
        self.spawn_command(label, args, cmd)
    }

    /// The peer binary, or a copy of it, that `nobody` can run.
    fn exe_for_nobody(&mut self) -> PathBuf {
        if let Some(exe) = &self.nobody_exe {
            return exe.clone();
        }
        let mut why = match runs_as_nobody(&self.exe) {
            Ok(()) => {
                self.nobody_exe = Some(self.exe.clone());
                return self.exe.clone();
            }
            Err(e) => vec![format!("{}: {e}", self.exe.display())],
        };
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let bases = [
            std::env::temp_dir(),
            PathBuf::from("/tmp"),
            PathBuf::from("/var/tmp"),
        ];
        for base in bases {
            let dir = base.join(format!(
                "shmbus-tests-{}-{n}-{}",
                std::process::id(),
                self.test
            ));
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            self.dirs.push(dir.clone());
            let copy = dir.join("shmbus-test-peer");
            let made = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .and_then(|()| std::fs::copy(&self.exe, &copy))
                .and_then(|_| {
                    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| e.to_string())
                .and_then(|()| runs_as_nobody(&copy));
            match made {
                Ok(()) => {
                    self.nobody_exe = Some(copy.clone());
                    return copy;
                }
                Err(e) => why.push(format!("{}: {e}", copy.display())),
            }
        }
        panic!("nobody can run neither the peer binary nor a copy of it: {why:?}");
    }

    /// Spawns `cmd` (a peer, possibly behind a wrapper that `exec`s it) as a [`Peer`].
    pub fn spawn_command(&mut self, label: &str, args: &[&str], cmd: Command) -> Peer {
        self.try_spawn_command(label, args, cmd)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Scope::spawn_command`], returning why `cmd` could not be started instead of
    /// panicking.
    pub fn try_spawn_command(
        &mut self,
        label: &str,
        args: &[&str],
        mut cmd: Command,
    ) -> Result<Peer, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("SHMBUS_TEST_PARENT", std::process::id().to_string());
        let mut child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = Arc::new(AtomicBool::new(false));
        {
            let stderr = Arc::clone(&stderr);
            let done = Arc::clone(&stderr_done);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
                done.store(true, Ordering::Release);
            });
        }
        let child = Rc::new(RefCell::new(Some(child)));
        self.children.push(Rc::clone(&child));
        Ok(Peer {
            label: format!("{label} ({})", args.join(" ")),
            child,
            pid,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_done,
            status: None,
        })
    }

    /// Waits (bounded) until the segment file of `name` is gone: the last user out removes it.
    ///
    /// # Panics
    ///
    /// If it is still there after [`STEP`].
    pub fn assert_gone(&self, name: &str) {
        let path = shm_file(name);
        let deadline = Instant::now() + STEP;
        while path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} is still there: the last user out should have removed it",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for c in &self.children {
            if let Some(mut child) = c.borrow_mut().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        // Objects derived from our names (an array topic's pool segments: `<name>.pool.*`).
        let prefixes: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("{}{n}.", shmbus_core::name::FILE_PREFIX))
            .collect();
        if let Ok(dir) = std::fs::read_dir(shmbus_core::segment::SHM_DIR) {
            for e in dir.flatten() {
                let file = e.file_name();
                let file = file.to_string_lossy();
                if prefixes.iter().any(|p| file.starts_with(p.as_str())) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the machine allows (see "No silent skips" at the top)
// ---------------------------------------------------------------------------------------------

/// The environment variable that turns a test which cannot do its job here from a failure into
/// a reported skip (a `SKIPPED:` line): `SHMBUS_ALLOW_SKIP=1`.
pub const ALLOW_SKIP: &str = "SHMBUS_ALLOW_SKIP";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `test` cannot do its job here, for `why`: fails the test (panics), unless
/// `SHMBUS_ALLOW_SKIP=1` is set, then prints `SKIPPED: <test>: <why>` and returns; the caller
/// then returns without checking anything.
///
/// # Panics
///
/// Unless `SHMBUS_ALLOW_SKIP=1` is set.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var(ALLOW_SKIP).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {test}: {why}");
    } else {
        panic!(
            "{test} cannot do its job here: {why}. CI runs it as root, where it must pass; set \
             {ALLOW_SKIP}=1 to report it as SKIPPED instead of failing"
        );
    }
}

/// Whether `test` may go on: true as root; otherwise [`skip_or_fail`] with `why` (what root is
/// needed for), so false only when skips are allowed.
///
/// # Panics
///
/// If not root, unless `SHMBUS_ALLOW_SKIP=1` is set.
pub fn require_root(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip_or_fail(test, &format!("needs root: {why}"));
    false
}

/// The uid and gid of the user `nobody` (from `/etc/passwd`; 65534 if it has no entry there).
pub fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            match f.as_slice() {
                ["nobody", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or((65534, 65534))
}

/// Whether `nobody` can run the peer binary `exe` (runs `exe --help` as nobody). Needs root.
fn runs_as_nobody(exe: &Path) -> Result<(), String> {
    let (uid, gid) = nobody();
    let status = Command::new(exe)
        .arg("--help")
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("nobody cannot run it: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("run as nobody, `--help` ended with {status}"))
    }
}

/// Where a test that calls `gc()` (or needs a `/dev/shm` of a given size) runs its processes.
///
/// `gc()` removes every stale segment on the machine, not just the test's. A private
/// `/dev/shm` is a tmpfs in a mount namespace of its own, held by an idle peer (peers join it
/// with `nsenter`), so that the test sees and removes only its own files. Root makes it with
/// `unshare --mount`; another user inside a user namespace (`unshare --user --map-root-user
/// --mount`) where the kernel allows that. Otherwise, or when `SHMBUS_TEST_GLOBAL_SHM` is set
/// (to test that path as root), a `gc()` test uses the real `/dev/shm` and holds
/// [`GcLock::exclusive`] while `gc()` runs.
#[derive(Debug)]
pub enum ShmEnv {
    /// A private `/dev/shm`, held by this idle peer.
    Private {
        /// The idle peer whose mount namespace has the tmpfs.
        holder: Peer,
        /// Whether that namespace belongs to a user namespace of its own (not root).
        user_ns: bool,
    },
    /// The machine's `/dev/shm`.
    Global,
}

impl ShmEnv {
    /// A private `/dev/shm` if this process may make one, else the global one (with a note).
    pub fn private_or_global(scope: &mut Scope) -> ShmEnv {
        if std::env::var_os("SHMBUS_TEST_GLOBAL_SHM").is_some() {
            eprintln!("NOTE: using the machine's /dev/shm (SHMBUS_TEST_GLOBAL_SHM is set)");
            return ShmEnv::Global;
        }
        match ShmEnv::private(scope) {
            Ok(env) => env,
            Err(why) => {
                eprintln!("NOTE: using the machine's /dev/shm, gc() under the gc lock ({why})");
                ShmEnv::Global
            }
        }
    }

    /// A private `/dev/shm` of `bytes` bytes, or `None` after [`skip_or_fail`] (when no mount
    /// namespace can be made here) for `test`.
    ///
    /// # Panics
    ///
    /// If no private `/dev/shm` can be made, unless `SHMBUS_ALLOW_SKIP=1` is set.
    pub fn private_or_skip(scope: &mut Scope, test: &str, bytes: u64) -> Option<ShmEnv> {
        match ShmEnv::private_sized(scope, bytes) {
            Ok(env) => Some(env),
            Err(why) => {
                skip_or_fail(
                    test,
                    &format!(
                        "needs a private /dev/shm (a mount namespace, as root or in a user \
                         namespace): {why}"
                    ),
                );
                None
            }
        }
    }

    /// A private `/dev/shm` (64 MiB), or why not.
    pub fn private(scope: &mut Scope) -> Result<ShmEnv, String> {
        ShmEnv::private_sized(scope, 64 << 20)
    }

    /// A private `/dev/shm` of `bytes` bytes (rounded up to pages), or why not.
    pub fn private_sized(scope: &mut Scope, bytes: u64) -> Result<ShmEnv, String> {
        ShmEnv::private_mounted(scope, &format!("size={bytes}"))
    }

    /// A private `/dev/shm`: a tmpfs mounted with `options` (`size=..,nr_inodes=..`; the mode
    /// is always 1777), or why not.
    pub fn private_mounted(scope: &mut Scope, options: &str) -> Result<ShmEnv, String> {
        let user_ns = !is_root();
        let mut cmd = Command::new("unshare");
        if user_ns {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o {options},mode=1777 shmbus-tests /dev/shm && exec \"$0\" idle"
            ))
            .arg(scope.exe());
        let what = if user_ns {
            "idle (in new user and mount namespaces)"
        } else {
            "idle (in a new mount namespace)"
        };
        let mut holder = scope.try_spawn_command("private /dev/shm", &[what], cmd)?;
        holder
            .try_expect("ready", STEP)
            .map_err(|e| format!("could not set up a private /dev/shm: {e}"))?;
        let env = ShmEnv::Private { holder, user_ns };
        // Check that it is really private.
        let probe = env.dir().join(format!("probe-{}", std::process::id()));
        std::fs::write(&probe, b"x")
            .map_err(|e| format!("cannot write {}: {e}", probe.display()))?;
        let leaked = Path::new("/dev/shm")
            .join(probe.file_name().expect("file name"))
            .exists();
        let _ = std::fs::remove_file(&probe);
        if leaked {
            return Err("the private /dev/shm is the machine's".into());
        }
        Ok(env)
    }

    /// The `/dev/shm` directory the peers see, as seen from this process.
    pub fn dir(&self) -> PathBuf {
        match self {
            ShmEnv::Private { holder, .. } => {
                PathBuf::from(format!("/proc/{}/root/dev/shm", holder.pid()))
            }
            ShmEnv::Global => PathBuf::from(shmbus_core::segment::SHM_DIR),
        }
    }

    /// The segment file of `name` in [`ShmEnv::dir`].
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir()
            .join(format!("{}{name}", shmbus_core::name::FILE_PREFIX))
    }

    /// The file names in [`ShmEnv::dir`], sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Bytes in use in the file system of [`ShmEnv::dir`].
    pub fn used_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(self.dir()).expect("statvfs of /dev/shm");
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }

    /// Whether this is a private `/dev/shm`.
    pub fn is_private(&self) -> bool {
        matches!(self, ShmEnv::Private { .. })
    }

    /// Spawns a peer that sees this `/dev/shm`.
    pub fn spawn(&self, scope: &mut Scope, label: &str, args: &[&str]) -> Peer {
        match self {
            ShmEnv::Private { holder, user_ns } => {
                let mut cmd = Command::new("nsenter");
                if *user_ns {
                    cmd.arg(format!("--user=/proc/{}/ns/user", holder.pid()))
                        .arg("--preserve-credentials");
                }
                cmd.arg(format!("--mount=/proc/{}/ns/mnt", holder.pid()))
                    .arg("--")
                    .arg(scope.exe())
                    .args(args);
                scope.spawn_command(label, args, cmd)
            }
            ShmEnv::Global => scope.spawn(label, args),
        }
    }

    /// Spawns a peer that sees this `/dev/shm` as the first process (pid 1) of a new PID
    /// namespace with its own `/proc` (`unshare --pid --fork --mount-proc`), so that it can
    /// choose the pids of its children (`/proc/sys/kernel/ns_last_pid`). Needs root (or the
    /// user namespace of a private `/dev/shm` made by another user). Killing the peer (the
    /// `unshare` process) kills the namespace: its first process dies with its parent, and
    /// with it every process of the namespace.
    pub fn spawn_in_pid_ns(&self, scope: &mut Scope, label: &str, args: &[&str]) -> Peer {
        let unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--"];
        let mut cmd = match self {
            ShmEnv::Private { holder, user_ns } => {
                let mut cmd = Command::new("nsenter");
                if *user_ns {
                    cmd.arg(format!("--user=/proc/{}/ns/user", holder.pid()))
                        .arg("--preserve-credentials");
                }
                cmd.arg(format!("--mount=/proc/{}/ns/mnt", holder.pid()))
                    .arg("--")
                    .args(unshare);
                cmd
            }
            ShmEnv::Global => {
                let mut cmd = Command::new(unshare[0]);
                cmd.args(&unshare[1..]);
                cmd
            }
        };
        cmd.arg(scope.exe()).args(args);
        scope.spawn_command(label, args, cmd)
    }

    /// Runs `gc()` once in a peer that sees this `/dev/shm`; returns the file names it removed.
    pub fn gc(&self, scope: &mut Scope) -> Vec<String> {
        let _lock = (!self.is_private()).then(GcLock::exclusive);
        let mut peer = self.spawn(scope, "gc", &["gc"]);
        let line = peer.finish("gc", STEP);
        let removed = line.get("removed");
        if removed == "none" {
            Vec::new()
        } else {
            removed.split(',').map(str::to_owned).collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks and utilities
// ---------------------------------------------------------------------------------------------

/// Checks a subscriber's `summary` line: `n` messages published from sequence number 0 on,
/// every one either received intact and in order or reported as lag, and the subscriber saw
/// its publisher go (`Disconnected`). Returns (received, lagged).
///
/// # Panics
///
/// If any of that does not hold.
pub fn check_summary(summary: &Line, n: u64) -> (u64, u64) {
    let ctx = &summary.raw;
    for k in ["bad_checksum", "bad_order", "gaps", "bad_index"] {
        assert_eq!(summary.num(k), 0, "{k} in {ctx}");
    }
    assert_eq!(summary.get("end"), "disconnected", "end in {ctx}");
    assert_eq!(
        summary.get("base"),
        "0",
        "the subscriber should have joined before message 0: {ctx}"
    );
    assert_eq!(summary.num("next"), n, "next in {ctx}");
    let (received, lagged) = (summary.num("received"), summary.num("lagged"));
    assert_eq!(
        received + lagged,
        n,
        "received + lagged must account for every message: {ctx}"
    );
    (received, lagged)
}

/// `/dev/shm/shmbus.<name>`.
pub fn shm_file(name: &str) -> PathBuf {
    PathBuf::from(shmbus_core::segment::SHM_DIR)
        .join(format!("{}{name}", shmbus_core::name::FILE_PREFIX))
}

/// The `shmbus` binary: `SHMBUS_CLI`, or what `$CARGO build -p shmbus-cli --bin shmbus` names
/// (cargo offers no `CARGO_BIN_EXE_` for another package's binaries). Built once per process.
///
/// # Panics
///
/// If cargo cannot build it.
pub fn cli_exe() -> &'static Path {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        if let Some(p) = std::env::var_os("SHMBUS_CLI") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "shmbus-cli",
                "--bin",
                "shmbus",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo to build the shmbus CLI");
        assert!(out.status.success(), "building the shmbus CLI failed");
        // `{"reason":"compiler-artifact",...,"executable":"/path/to/shmbus",...}`; no JSON
        // parser needed for one string field.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("\"compiler-artifact\""))
            .filter_map(|l| {
                let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
                let end = l[at..].find('"')?;
                Some(PathBuf::from(&l[at..at + end]))
            })
            .find(|p| p.file_name().is_some_and(|f| f == "shmbus"))
            .expect("cargo named the shmbus executable")
    })
}

/// Polls `cond` every 2 ms for at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A small deterministic generator (xorshift*), seeded and printed by the tests that use it so
/// that a failure can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `SHMBUS_TEST_SEED` if set, else from the clock and pid.
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var("SHMBUS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
            });
        eprintln!("random seed: SHMBUS_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    /// A generator from `seed` (mixed first, so that nearby seeds give unrelated streams).
    pub fn from_seed(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// The gc lock
// ---------------------------------------------------------------------------------------------

/// `shmbus_core::segment::gc()` removes every stale segment on the machine, including one that
/// another test deliberately left stale to check it. Tests that need a stale or foreign file to
/// stay hold this lock shared; the test that calls `gc()` holds it exclusively.
///
/// A test that makes stale files and then runs `gc()` itself takes it exclusively from the
/// start (releasing a shared lock before `gc()` would let another test's `gc()` in between);
/// while a thread holds it exclusively, its further `shared()`/`exclusive()` are covered by
/// that and return at once (they must not outlive the outer guard).
#[derive(Debug)]
pub struct GcLock {
    _file: Option<File>,
    exclusive: bool,
}

thread_local! {
    /// How many exclusive guards this thread holds (the first one holds the file lock).
    static EXCLUSIVE_HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl GcLock {
    fn take(exclusive: bool) -> GcLock {
        use rustix::fs::FlockOperation as Op;
        let held = EXCLUSIVE_HELD.with(std::cell::Cell::get);
        if held > 0 {
            if exclusive {
                EXCLUSIVE_HELD.with(|c| c.set(held + 1));
            }
            return GcLock {
                _file: None,
                exclusive,
            };
        }
        let path = std::env::temp_dir().join("shmbus-tests.gc.lock");
        // Created by whoever comes first; another user (the file is 0644) opens it read-only,
        // which is enough for `flock`.
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let op = if exclusive {
            Op::NonBlockingLockExclusive
        } else {
            Op::NonBlockingLockShared
        };
        let ok = wait_until(Duration::from_secs(30), || {
            rustix::fs::flock(file.as_fd(), op).is_ok()
        });
        assert!(ok, "could not take the gc lock {} in 30 s", path.display());
        if exclusive {
            EXCLUSIVE_HELD.with(|c| c.set(1));
        }
        GcLock {
            _file: Some(file),
            exclusive,
        }
    }

    /// Keeps `gc()` of other tests away while held.
    pub fn shared() -> GcLock {
        GcLock::take(false)
    }

    /// Waits until no test needs its stale files, then holds them off.
    pub fn exclusive() -> GcLock {
        GcLock::take(true)
    }
}

impl Drop for GcLock {
    fn drop(&mut self) {
        if self.exclusive {
            EXCLUSIVE_HELD.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_checks_catch_changes() {
        let m = Msg::new(7, 42);
        assert!(m.is_intact());
        for i in 0..5 {
            let mut bad = m;
            bad.data[i] ^= 1;
            assert!(!bad.is_intact());
        }
        let mut bad = m;
        bad.index += 1;
        assert!(!bad.is_intact(), "a message relabelled with another index");
        let r = Rec::new(7, 42);
        assert!(r.is_intact());
        let mut bad = r.clone();
        bad.label.push('x');
        assert!(!bad.is_intact());
    }

    #[test]
    fn lines_parse() {
        let l = Line::parse("summary received=3 end=count msg=a b=c d");
        assert_eq!(l.tag, "summary");
        assert_eq!(l.num("received"), 3);
        assert_eq!(l.get("end"), "count");
        assert_eq!(l.get("msg"), "a b=c d");
        assert_eq!(Line::parse("ready").tag, "ready");
    }
}

// ---------------------------------------------------------------------------------------------
// Frames (array topics)
// ---------------------------------------------------------------------------------------------

/// Metadata sent with every test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct FrameMeta {
    /// The frame's index in its stream.
    pub index: u64,
    /// Bytes of the frame.
    pub len: u64,
}

/// Byte `i` of frame `index`: cheap, and different for every frame and position.
pub fn frame_byte(index: u64, i: usize) -> u8 {
    ((i as u32).wrapping_mul(2_654_435_761) ^ (index as u32).wrapping_mul(40_503)) as u8
        ^ (i >> 8) as u8
}

/// Fills `bytes` as frame `index`.
pub fn fill_frame(index: u64, bytes: &mut [u8]) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = frame_byte(index, i);
    }
}

/// The first position where `bytes` is not frame `index`.
pub fn check_frame(index: u64, bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b != frame_byte(index, i))
}

/// The dtype (`"u8"` or `"f32"`) and shape of frame `index`: `base` (u8) unless `varying`,
/// when sizes and dtypes rotate through four kinds.
pub fn frame_shape(index: u64, base: &[usize], varying: bool) -> (&'static str, Vec<usize>) {
    if !varying {
        return ("u8", base.to_vec());
    }
    match index % 4 {
        0 => ("u8", base.to_vec()),
        1 => ("u8", vec![17, 33, 3]),
        2 => ("f32", vec![1000]),
        _ => ("u8", vec![base.iter().product::<usize>() * 2]),
    }
}

/// Resident memory figures of process `pid` from `/proc/PID/status`, in KiB:
/// `(VmRSS, RssAnon, RssShmem)`.
pub fn rss_kib(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssShmem:"))
}

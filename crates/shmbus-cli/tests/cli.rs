//! The `shmbus` binary run as a user runs it, against topics that real processes (the
//! workspace's examples) create, use, and abandon when SIGKILLed, and against topics this test
//! process publishes on with the typed API (`shmbus`), so that what `echo` decodes can be
//! compared with what was sent, and whose headers it then damages as a hostile process could.
//!
//! The example binaries are built by the test itself: `$CARGO build -p shmbus-examples
//! --example pubsub --example image_transfer --message-format=json`, whose `compiler-artifact`
//! messages give the exact paths of the executables (whatever the target directory or profile).
//! Cargo offers no `CARGO_BIN_EXE_` for another package's examples, and this needs no guessing
//! of paths. The first test to run pays for the build; later ones find it done.
//!
//! Every test has its own name prefix (`clitest.<pid>.<n>`) and only ever lists, removes or
//! collects names under it, so tests running in parallel (and other test suites on the
//! machine) do not see each other's objects. A [`Scope`] kills its children and removes
//! `/dev/shm/shmbus.<prefix>*` when dropped, also when a test fails (it is made first, so it
//! drops after the test's own publishers). Every `shmbus` run is bounded in wall-clock time and
//! SIGKILLed past it ([`Pending::finish`]).

use std::io::{BufRead, BufReader, Read};
use std::mem::offset_of;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use shmbus_core::segment::Header;
use shmbus_core::wire;

/// Bound on one CLI run (`hz` runs for at most a few seconds; `echo` gets a `--timeout`).
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// Bound on waiting for processes to set up or tear down.
const STEP: Duration = Duration::from_secs(20);

struct Examples {
    pubsub: PathBuf,
    image_transfer: PathBuf,
}

fn examples() -> &'static Examples {
    static EXAMPLES: OnceLock<Examples> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "shmbus-examples",
                "--example",
                "pubsub",
                "--example",
                "image_transfer",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo to build the examples");
        assert!(out.status.success(), "building the examples failed");
        let mut found = (None, None);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = msg["executable"].as_str() else {
                continue;
            };
            match msg["target"]["name"].as_str() {
                Some("pubsub") => found.0 = Some(PathBuf::from(exe)),
                Some("image_transfer") => found.1 = Some(PathBuf::from(exe)),
                _ => {}
            }
        }
        Examples {
            pubsub: found.0.expect("cargo named the pubsub example"),
            image_transfer: found.1.expect("cargo named the image_transfer example"),
        }
    })
}

/// One test's names, processes and files.
struct Scope {
    prefix: String,
    children: Vec<Child>,
}

impl Scope {
    fn new() -> Scope {
        static N: AtomicU32 = AtomicU32::new(0);
        Scope {
            prefix: format!(
                "clitest.{}.{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            children: Vec::new(),
        }
    }

    /// A name under this scope's prefix.
    fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    fn spawn(&mut self, exe: &PathBuf, args: &[&str]) -> u32 {
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", exe.display()));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// A pubsub publisher on `<prefix>.ps.{pose,status}` that runs until killed.
    fn pubsub_publisher(&mut self) -> u32 {
        let topic = self.name("ps");
        let exe = &examples().pubsub;
        self.spawn(
            exe,
            &["publish", "--topic", &topic, "--count", "1000000000000"],
        )
    }

    /// An image_transfer producer and one consumer on `<prefix>.it.frames`: 64x48 frames at
    /// 50 fps, for hours.
    fn image_transfer(&mut self) -> (u32, u32) {
        let topic = self.name("it");
        let png = std::env::temp_dir().join(format!("{}.png", self.prefix));
        let png = png.to_string_lossy().into_owned();
        let common = [
            "--topic",
            &topic,
            "--consumers",
            "1",
            "--frames",
            "1000000",
            "--fps",
            "50",
            "--width",
            "64",
            "--height",
            "48",
            "--png",
            &png,
        ];
        let exe = &examples().image_transfer;
        let producer = self.spawn(exe, &[&["producer"][..], &common].concat());
        let consumer = self.spawn(exe, &[&["consumer", "--index", "0"][..], &common].concat());
        (producer, consumer)
    }

    /// SIGKILLs every child and reaps it.
    fn kill_all(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// `/dev/shm` files under this scope's prefix.
    fn files(&self) -> Vec<String> {
        let start = format!("shmbus.{}.", self.prefix);
        let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|f| f.starts_with(&start))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.kill_all();
        for f in self.files() {
            let _ = std::fs::remove_file(PathBuf::from("/dev/shm").join(f));
        }
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{}.png", self.prefix)));
    }
}

/// What one run of `shmbus` gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Wall-clock time from spawn to exit.
    took: Duration,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "shmbus failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    fn json(&self) -> Value {
        let out = self.ok();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn json_lines(&self) -> Vec<Value> {
        self.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The run failed (status 1) within `bound`, saying `what` on standard error.
    fn failed_within(&self, bound: Duration, what: &str) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "shmbus should fail\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(self.took < bound, "took {:?} (bound {bound:?})", self.took);
        assert!(
            self.stderr.starts_with("shmbus: error: "),
            "{}",
            self.stderr
        );
        assert!(self.stderr.contains(what), "`{what}` in {}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        &self.stderr
    }
}

/// A `shmbus` running in the background, its output collected by a thread.
struct Pending {
    args: Vec<String>,
    pid: u32,
    started: Instant,
    done: mpsc::Receiver<(std::io::Result<std::process::ExitStatus>, String, String)>,
}

impl Pending {
    fn start(args: &[&str]) -> Pending {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning shmbus");
        let started = Instant::now();
        let pid = child.id();
        let (mut out, mut err) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut o, mut e) = (String::new(), String::new());
            let _ = out.read_to_string(&mut o);
            let _ = err.read_to_string(&mut e);
            let _ = tx.send((child.wait(), o, e));
        });
        Pending {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            pid,
            started,
            done,
        }
    }

    /// Waits for the run to end; SIGKILLs it and fails the test if it runs past `limit`.
    fn finish(self, limit: Duration) -> Run {
        let left = limit.saturating_sub(self.started.elapsed());
        match self.done.recv_timeout(left) {
            Ok((status, stdout, stderr)) => Run {
                code: status.expect("waiting for shmbus").code(),
                stdout,
                stderr,
                took: self.started.elapsed(),
            },
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-9", &self.pid.to_string()])
                    .status();
                panic!("shmbus {:?} ran longer than {limit:?}", self.args);
            }
        }
    }
}

/// Runs `shmbus args`, bounded by [`RUN_LIMIT`].
fn shmbus(args: &[&str]) -> Run {
    Pending::start(args).finish(RUN_LIMIT)
}

/// Polls `f` until it returns `Some`, for at most [`STEP`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ls --json PREFIX` as a map from name to entry.
fn ls(prefix: &str) -> Vec<Value> {
    shmbus(&["ls", "--json", prefix]).json()["objects"]
        .as_array()
        .expect("objects")
        .clone()
}

fn find<'a>(objects: &'a [Value], name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["name"] == name)
}

fn owner(entry: &Value, pid: u32, role: &str) -> bool {
    entry["owners"].as_array().is_some_and(|os| {
        os.iter()
            .any(|o| o["pid"] == pid && o["alive"] == true && o["role"] == role)
    })
}

#[test]
fn live_topics_are_listed_inspected_echoed_and_timed() {
    let mut s = Scope::new();
    let publisher = s.pubsub_publisher();
    let (producer, consumer) = s.image_transfer();
    let (pose, status, frames) = (s.name("ps.pose"), s.name("ps.status"), s.name("it.frames"));

    // ls: every object, with its kind, type and live users.
    let objects = wait_for("the examples' topics", || {
        let objects = ls(&s.prefix);
        let ready = [&pose, &status].iter().all(|n| {
            find(&objects, n).is_some_and(|e| e["publishers"] == 1)
        }) && find(&objects, &frames)
            .is_some_and(|e| e["publishers"] == 1 && e["subscribers"] == 1)
            // The producer makes its pool segments when it draws the first frame.
            && objects.iter().any(|o| o["kind"] == "pool");
        ready.then_some(objects)
    });
    let e = find(&objects, &pose).unwrap();
    assert_eq!(e["kind"], "topic");
    assert_eq!(e["type"]["name"], "pubsub::Pose");
    assert_eq!(e["type"]["codec"], "pod");
    assert_eq!(e["type"]["size"], 32);
    assert_eq!(e["lifetime"], "scoped");
    assert_eq!(e["stale"], false);
    assert_eq!(e["in_use"], true);
    assert!(owner(e, publisher, "publisher"), "{e}");
    let e = find(&objects, &status).unwrap();
    assert_eq!(e["type"]["codec"], "postcard");
    assert_eq!(e["type"]["name"], "pubsub::Status");
    let e = find(&objects, &frames).unwrap();
    assert!(e["type"]["name"]
        .as_str()
        .unwrap()
        .starts_with(wire::type_name::ARRAY_TOPIC_PREFIX));
    assert!(owner(e, producer, "publisher"), "{e}");
    assert!(owner(e, consumer, "subscriber"), "{e}");
    let pools: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "pool").collect();
    assert!(
        !pools.is_empty(),
        "the array topic's pool segments are listed"
    );
    for p in &pools {
        assert_eq!(p["topic"], frames.as_str());
        assert!(owner(p, producer, "attached"), "{p}");
    }
    // The table says the same.
    let table = shmbus(&["ls", &s.prefix]).ok().to_owned();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["KIND", "NAME", "TYPE", "SIZE", "PUB", "SUB", "OWNERS", "STALE", "NOTE"]
    );
    assert!(table.lines().any(|l| l.starts_with("topic")
        && l.contains(&pose)
        && l.contains(&publisher.to_string())));

    // inspect: QoS as the example asked, counters moving, participants with their pids.
    let a = shmbus(&["inspect", "--json", &pose]).json();
    assert_eq!(a["kind"], "topic");
    assert_eq!(a["topic"]["qos"]["capacity"], 256);
    assert_eq!(a["topic"]["qos"]["overflow"], "back-pressure");
    assert_eq!(a["topic"]["qos"]["timestamps"], true);
    assert_eq!(a["topic"]["participants_read"], true);
    assert_eq!(a["topic"]["publishers"][0]["pid"], publisher);
    assert_eq!(a["topic"]["publishers"][0]["alive"], true);
    assert_eq!(a["creator_pid"], publisher);
    assert_eq!(a["creator_alive"], true);
    assert!(a["created_unix_ns"].as_u64().unwrap() > 0);
    let published = |v: &Value| v["topic"]["counters"]["published"].as_u64().unwrap();
    let b = wait_for("the pose counter to move", || {
        let b = shmbus(&["inspect", "--json", &pose]).json();
        (published(&b) > published(&a)).then_some(b)
    });
    assert!(published(&b) > 0);
    let f = shmbus(&["inspect", "--json", &frames]).json();
    assert_eq!(f["topic"]["qos"]["timestamps"], true);
    let sub = &f["topic"]["subscribers"][0];
    assert_eq!(sub["pid"], consumer);
    assert_eq!(sub["alive"], true);
    // The pool may have grown since `ls`, never shrunk.
    let segments = f["topic"]["pool_segments"].as_array().unwrap();
    assert!(pools.iter().all(|p| segments.contains(&p["name"])), "{f}");
    let text = shmbus(&["inspect", &frames]).ok().to_owned();
    for section in ["QoS", "Counters", "Publishers (1)", "Subscribers (1)"] {
        assert!(text.contains(section), "{section} in\n{text}");
    }
    let p = shmbus(&["inspect", "--json", pools[0]["name"].as_str().unwrap()]).json();
    assert_eq!(p["pool"]["topic"], frames.as_str());
    assert!(p["pool"]["block_size"].as_u64().unwrap() >= 64 * 48 * 3);

    // echo: Pod with a layout; the example's invariants (x = seq, y = -seq) hold.
    let msgs = shmbus(&[
        "echo",
        &pose,
        "--count",
        "3",
        "--timeout",
        "10",
        "--json",
        "--as",
        "seq:u64,x:f64,y:f64,theta:f64",
    ])
    .json_lines();
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        let v = &m["value"];
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(v["x"].as_f64().unwrap(), seq as f64, "{m}");
        assert_eq!(v["y"].as_f64().unwrap(), -(seq as f64), "{m}");
        assert_eq!(v["theta"].as_f64().unwrap(), (seq % 360) as f64, "{m}");
    }
    // Without a layout: a hex dump that says how to decode it.
    let hex = shmbus(&["echo", &pose, "--count", "1", "--timeout", "10"]);
    let hex = hex.ok();
    assert!(hex.contains("32 bytes:") && hex.contains("--as"), "{hex}");
    assert!(hex.contains("00000000  "), "{hex}");
    // Serde with a layout: the status the example derives from seq.
    let msgs = shmbus(&[
        "echo",
        &status,
        "--count",
        "3",
        "--timeout",
        "10",
        "--json",
        "--as",
        "seq:u64,mode:string,warnings:[string]",
    ])
    .json_lines();
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        let v = &m["value"];
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(seq % 10, 0, "{m}");
        assert_eq!(v["mode"], if seq % 2 == 0 { "auto" } else { "manual" });
        assert_eq!(v["warnings"], serde_json::json!([format!("w{}", seq % 7)]));
        assert!(m.get("note").is_none(), "no bytes left over: {m}");
    }
    // Array topic: the descriptor, and the metadata decoded with --as.
    let msgs = shmbus(&[
        "echo",
        &frames,
        "--count",
        "3",
        "--timeout",
        "10",
        "--json",
        "--as",
        "frame:u64,width:u32,height:u32,send_ns:u64",
    ])
    .json_lines();
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        assert_eq!(m["array"]["dtype"], "uint8", "{m}");
        assert_eq!(m["array"]["shape"], serde_json::json!([48, 64, 3]));
        assert_eq!(
            m["meta"]["frame"], m["seq"],
            "one frame per message, from 0"
        );
        assert_eq!(m["meta"]["width"], 64);
        assert_eq!(m["meta"]["height"], 48);
    }
    let plain = shmbus(&["echo", &frames, "--count", "1", "--timeout", "10"]);
    assert!(
        plain.ok().contains("\"shape\":[48,64,3]"),
        "{}",
        plain.stdout
    );
    // A reader that goes away (`shmbus echo | head -1`) ends echo quietly, not with a panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args(["echo", &pose, "--timeout", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning shmbus");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut first)
        .expect("a line");
    assert!(first.starts_with('#'), "{first}");
    // The pipe is closed now: the next message cannot be written.
    let exit = wait_for("echo to notice the closed pipe", || {
        child.try_wait().ok().flatten()
    });
    let mut err = String::new();
    let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
    assert!(exit.success(), "{exit}: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // A layout of the wrong size is refused before anything is read.
    let bad = shmbus(&["echo", &pose, "--as", "seq:u64", "--timeout", "1"]);
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("32 bytes"), "{}", bad.stderr);

    // hz: the producer's 50 fps with its publish-to-receive latency (the frames topic records
    // publish times), and "n/a" where a topic records none (the status topic).
    let h = shmbus(&["hz", &frames, "--duration", "2", "--json"]).json();
    let rate = h["rate_hz"].as_f64().expect("a rate");
    assert!((5.0..500.0).contains(&rate), "50 fps measured as {rate}");
    assert!(h["messages"].as_u64().unwrap() >= 10);
    assert!(h["latency_ns"]["mean"].as_f64().unwrap() > 0.0, "{h}");
    assert!(h["latency_note"].is_null());
    let h = shmbus(&["hz", &pose, "--duration", "1", "--json"]).json();
    assert!(h["rate_hz"].as_f64().unwrap() > 0.0);
    assert!(h["latency_ns"]["mean"].as_f64().unwrap() > 0.0, "{h}");
    assert!(h["latency_note"].is_null());
    let h = shmbus(&["hz", &status, "--duration", "1", "--json"]).json();
    assert!(h["latency_ns"].is_null());
    assert_eq!(h["latency_note"], "n/a (topic has no timestamps)");
    let text = shmbus(&["hz", &frames, "--duration", "1.5"]);
    assert!(text.ok().contains("average rate:"), "{}", text.stdout);
    assert!(text.stdout.contains("latency: mean"), "{}", text.stdout);
    let text = shmbus(&["hz", &status, "--duration", "1"]);
    assert!(text
        .stdout
        .contains("latency: n/a (topic has no timestamps)"));

    // Unknown names: a suggestion and a failure status.
    let typo = format!("{}.ps.pse", s.prefix);
    let r = shmbus(&["inspect", &typo]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(&format!(
            "no shmbus object named `{typo}`; did you mean `{pose}`"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(shmbus(&["echo", &typo, "--count", "1"]).code, Some(1));
    let r = shmbus(&[
        "echo",
        &s.name("it.ready"),
        "--count",
        "1",
        "--timeout",
        "1",
    ]);
    assert_eq!(r.code, Some(1));

    // rm refuses what live processes use, then removes it with --force and says so.
    let r = shmbus(&["rm", &status]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("in use by process"), "{}", r.stderr);
    assert!(
        find(&ls(&s.prefix), &status).is_some(),
        "refused means kept"
    );
    let r = shmbus(&["rm", "--force", "--json", &status]).json();
    assert_eq!(r["removed"][0]["name"], status.as_str());
    assert!(r["removed"][0]["note"]
        .as_str()
        .unwrap()
        .contains("still mapped"));
    assert!(find(&ls(&s.prefix), &status).is_none());
}

#[test]
fn objects_of_killed_processes_are_stale_and_gc_removes_them() {
    let mut s = Scope::new();
    s.pubsub_publisher();
    s.image_transfer();
    let (pose, frames) = (s.name("ps.pose"), s.name("it.frames"));
    wait_for("the examples' topics", || {
        let objects = ls(&s.prefix);
        let live = find(&objects, &pose).is_some_and(|e| e["publishers"] == 1)
            && find(&objects, &frames).is_some_and(|e| e["subscribers"] == 1)
            && objects.iter().any(|o| o["kind"] == "pool");
        live.then_some(())
    });
    assert!(ls(&s.prefix).iter().all(|o| o["stale"] == false));

    s.kill_all(); // SIGKILL: nobody leaves cleanly
    let objects = ls(&s.prefix);
    assert!(objects.len() >= 4, "{objects:?}");
    for o in &objects {
        assert_eq!(o["stale"], true, "{o}");
        assert_eq!(o["in_use"], false, "{o}");
    }
    let table = shmbus(&["ls", &s.prefix]).ok().to_owned();
    assert!(table.contains("no live process: gc removes it"), "{table}");

    // Looking at a stale topic does not remove it, and tells why rows are not read.
    let i = shmbus(&["inspect", "--json", &pose]).json();
    assert_eq!(i["stale"], true);
    assert_eq!(i["creator_alive"], false);
    assert_eq!(i["topic"]["participants_read"], false);
    assert!(i["topic"]["counters"]["published"].as_u64().unwrap() > 0);
    assert_eq!(ls(&s.prefix).len(), objects.len());
    let r = shmbus(&["echo", &pose, "--count", "1", "--timeout", "1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no live process"), "{}", r.stderr);

    // rm of the array topic takes its unused pool segments along.
    let r = shmbus(&["rm", "--json", &frames]).json();
    let removed: Vec<&str> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed[0], frames);
    assert!(removed.len() >= 2, "pool segments removed too: {r}");
    assert!(removed[1..]
        .iter()
        .all(|n| n.starts_with(&format!("{frames}.pool."))));
    assert!(r["kept"].as_array().unwrap().is_empty());

    // gc removes the rest, and says what.
    let left: Vec<String> = ls(&s.prefix)
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(left.contains(&pose));
    let r = shmbus(&["gc", "--json", &s.prefix]).json();
    let mut gone: Vec<String> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect();
    gone.sort();
    assert_eq!(gone, left);
    assert!(ls(&s.prefix).is_empty());
    assert!(s.files().is_empty(), "{:?}", s.files());
    let again = shmbus(&["gc", &s.prefix]);
    assert!(again.ok().contains("nothing to remove"));
}

#[test]
fn damaged_and_foreign_segments_are_reported_not_fatal() {
    let s = Scope::new();
    let dir = PathBuf::from("/dev/shm");
    let garbage = s.name("garbage");
    let short = s.name("short");
    let future = s.name("future");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join(format!("shmbus.{garbage}")), &random).unwrap();
    std::fs::write(dir.join(format!("shmbus.{short}")), b"SHMBUS").unwrap();
    // Our magic, but a format version from the future.
    let mut header = vec![0u8; 8192];
    header[..wire::MAGIC.len()].copy_from_slice(&wire::MAGIC);
    let version = offset_of!(Header, format_version);
    header[version..version + 4].copy_from_slice(&999u32.to_ne_bytes());
    std::fs::write(dir.join(format!("shmbus.{future}")), &header).unwrap();
    // A FIFO: opening it for reading would wait for a writer; nothing may wait on it.
    let fifo = s.name("fifo");
    let made = Command::new("mkfifo")
        .arg(dir.join(format!("shmbus.{fifo}")))
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo: {made}");

    let objects = ls(&s.prefix);
    assert_eq!(objects.len(), 4, "{objects:?}");
    for o in &objects {
        assert_eq!(o["kind"], "?", "{o}");
        assert_eq!(o["stale"], false, "gc leaves what is not ours: {o}");
    }
    let problem = |n: &str| {
        find(&objects, n).unwrap()["problem"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        problem(&garbage).starts_with("corrupt: bad magic"),
        "{}",
        problem(&garbage)
    );
    assert!(
        problem(&short).starts_with("corrupt:"),
        "{}",
        problem(&short)
    );
    assert!(
        problem(&future).contains("format version 999"),
        "{}",
        problem(&future)
    );
    assert_eq!(problem(&fifo), "corrupt: a FIFO, not a regular file");
    let r = shmbus(&["inspect", &fifo]);
    assert!(r.ok().contains("a FIFO"), "{}", r.stdout);
    let r = shmbus(&["echo", &fifo, "--count", "1", "--timeout", "1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("a FIFO"), "{}", r.stderr);
    assert!(shmbus(&["ls", &s.prefix])
        .ok()
        .contains("corrupt: bad magic"));

    let i = shmbus(&["inspect", "--json", &future]).json();
    assert_eq!(i["format_version"], 999);
    assert!(shmbus(&["inspect", &garbage]).ok().contains("problem"));
    let r = shmbus(&["echo", &garbage, "--count", "1", "--timeout", "1"]);
    assert_eq!(r.code, Some(1));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.starts_with("shmbus: error: "), "{}", r.stderr);

    // gc keeps them but names them, with the problem `ls` shows; rm removes them and says
    // what they were.
    let r = shmbus(&["gc", "--json", &s.prefix]).json();
    assert!(r["removed"].as_array().unwrap().is_empty());
    let listed = r["unreadable"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{r}");
    for u in listed {
        let name = u["name"].as_str().unwrap();
        assert_eq!(u["reason"].as_str().unwrap(), problem(name), "{u}");
        assert_eq!(u["in_use"], false, "{u}");
        assert_eq!(u["removed"], false, "{u}");
    }
    let r = shmbus(&["rm", &garbage, &short, &future, &fifo]);
    let out = r.ok();
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("not a readable shmbus segment"), "{out}");
    assert!(s.files().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Messages written by the typed API, decoded by `shmbus echo`.
// ---------------------------------------------------------------------------------------------

/// A `#[repr(C)]` message with the padding a C compiler would put in, spelled out (`Pod` wants
/// no implicit padding); `--as` leaves it out and `echo` computes it.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Reading {
    seq: u64,
    x: f32,
    kind: u8,
    _pad: u8,
    id: u16,
    v: [f64; 2],
    t: i32,
    _pad2: [u8; 4],
}

const READING_AS: &str = "seq:u64,x:f32,kind:u8,id:u16,v:[f64;2],t:i32";

impl Reading {
    fn new(i: u64) -> Reading {
        Reading {
            seq: i,
            x: i as f32 * 0.25,
            kind: (i % 3) as u8,
            _pad: 0xee,
            id: 1000 + i as u16,
            v: [-(i as f64), i as f64 * 1.5],
            t: -7 * i as i32,
            _pad2: [0xee; 4],
        }
    }

    fn json(&self) -> Value {
        serde_json::json!({
            "seq": self.seq, "x": self.x, "kind": self.kind, "id": self.id,
            "v": self.v, "t": self.t,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Status {
    seq: u64,
    mode: String,
    warnings: Vec<String>,
    level: Option<i32>,
    pos: Pos,
    flags: [bool; 2],
}

#[derive(Debug, Clone, serde::Serialize)]
struct Pos {
    x: f64,
    y: f64,
}

const STATUS_AS: &str =
    "seq:u64,mode:string,warnings:[string],level:i32?,pos:{x:f64,y:f64},flags:[bool;2]";

impl Status {
    fn new(i: u64) -> Status {
        Status {
            seq: i,
            mode: if i % 2 == 0 { "auto" } else { "manuel é" }.into(),
            warnings: (0..i % 3).map(|w| format!("w{w}")).collect(),
            level: (i % 2 == 1).then_some(-(i as i32)),
            pos: Pos {
                x: i as f64 / 4.0,
                y: -1.0e10,
            },
            flags: [i % 2 == 0, true],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct FrameMeta {
    frame: u64,
    width: u32,
    height: u32,
}

/// Messages per topic in the round trip.
const N: u64 = 5;

/// Runs `shmbus echo` with `args` in the background, waits until it has joined (`subscribers`
/// reports the topic's subscriber count), lets `publish` send, and returns the messages echoed.
fn echo_round_trip<P>(
    args: &[&str],
    publisher: &mut P,
    subscribers: impl Fn(&P) -> u32,
    publish: impl FnOnce(&mut P) -> Vec<u64>,
) -> (Vec<u64>, Vec<Value>) {
    let echo = Pending::start(args);
    wait_for("echo to join", || {
        (subscribers(publisher) >= 1).then_some(())
    });
    let seqs = publish(publisher);
    (seqs, echo.finish(RUN_LIMIT).json_lines())
}

#[test]
fn echo_decodes_what_the_typed_api_publishes() {
    let s = Scope::new();
    let limit = "10";

    // A Pod struct with padding, decoded with --as.
    let pod = s.name("pod");
    let mut p = shmbus::Topic::builder(&pod).publisher::<Reading>().unwrap();
    let count = N.to_string();
    let args = [
        "echo",
        &pod,
        "--count",
        &count,
        "--timeout",
        limit,
        "--json",
        "--as",
        READING_AS,
    ];
    let (seqs, msgs) = echo_round_trip(
        &args,
        &mut p,
        |p| p.stats().subscribers,
        |p| (0..N).map(|i| p.send(Reading::new(i)).unwrap()).collect(),
    );
    assert_eq!(msgs.len(), N as usize, "{msgs:?}");
    for (i, (m, seq)) in msgs.iter().zip(&seqs).enumerate() {
        assert_eq!(m["seq"], *seq, "{m}");
        assert_eq!(m["value"], Reading::new(i as u64).json(), "{m}");
        assert!(m.get("error").is_none() && m.get("hex").is_none(), "{m}");
    }
    drop(p);

    // A Pod type echo knows by its name: no --as.
    let known = s.name("known");
    let mut p = shmbus::Topic::builder(&known)
        .publisher::<[i16; 4]>()
        .unwrap();
    let args = [
        "echo",
        &known,
        "--count",
        &count,
        "--timeout",
        limit,
        "--json",
    ];
    let value = |i: u64| [i as i16, -(i as i16), i16::MIN, i16::MAX];
    let (_, msgs) = echo_round_trip(
        &args,
        &mut p,
        |p| p.stats().subscribers,
        |p| (0..N).map(|i| p.send(value(i)).unwrap()).collect(),
    );
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["value"], serde_json::json!(value(i as u64)), "{m}");
    }
    drop(p);

    // A serde struct (postcard in a length-prefixed slot), decoded with --as.
    let serde_topic = s.name("serde");
    let mut p = shmbus::Topic::builder(&serde_topic)
        .serde_publisher::<Status>()
        .unwrap();
    let args = [
        "echo",
        &serde_topic,
        "--count",
        &count,
        "--timeout",
        limit,
        "--json",
        "--as",
        STATUS_AS,
    ];
    let (seqs, msgs) = echo_round_trip(
        &args,
        &mut p,
        |p| p.stats().subscribers,
        |p| (0..N).map(|i| p.send(Status::new(i)).unwrap()).collect(),
    );
    assert_eq!(msgs.len(), N as usize, "{msgs:?}");
    for (i, (m, seq)) in msgs.iter().zip(&seqs).enumerate() {
        assert_eq!(m["seq"], *seq, "{m}");
        let sent = serde_json::to_value(Status::new(i as u64)).unwrap();
        assert_eq!(m["value"], sent, "{m}");
        assert!(m.get("note").is_none(), "no bytes left over: {m}");
    }
    drop(p);

    // A serde type echo knows by its name.
    let strings = s.name("strings");
    let mut p = shmbus::Topic::builder(&strings)
        .serde_publisher::<Vec<String>>()
        .unwrap();
    let args = [
        "echo",
        &strings,
        "--count",
        &count,
        "--timeout",
        limit,
        "--json",
    ];
    let value = |i: u64| (0..i).map(|k| format!("s{k}")).collect::<Vec<String>>();
    let (_, msgs) = echo_round_trip(
        &args,
        &mut p,
        |p| p.stats().subscribers,
        |p| (0..N).map(|i| p.send(value(i)).unwrap()).collect(),
    );
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["value"], serde_json::json!(value(i as u64)), "{m}");
    }
    drop(p);

    // An array topic: the block descriptor as the pool wrote it, and the metadata.
    let frames = s.name("frames");
    let mut p = shmbus::Topic::builder(&frames)
        .pool_linger(Duration::ZERO)
        .array_publisher::<FrameMeta>()
        .unwrap();
    let args = [
        "echo",
        &frames,
        "--count",
        &count,
        "--timeout",
        limit,
        "--json",
        "--as",
        "frame:u64,width:u32,height:u32",
    ];
    let shape = |i: u64| [2 + i as usize, 3];
    let (seqs, msgs) = echo_round_trip(
        &args,
        &mut p,
        |p| p.stats().subscribers,
        |p| {
            (0..N)
                .map(|i| {
                    let shape = shape(i);
                    let data: Vec<u16> = (0..shape[0] * shape[1]).map(|k| k as u16).collect();
                    let meta = FrameMeta {
                        frame: i,
                        width: shape[1] as u32,
                        height: shape[0] as u32,
                    };
                    p.send::<u16>(&shape, &data, meta).unwrap()
                })
                .collect()
        },
    );
    assert_eq!(msgs.len(), N as usize, "{msgs:?}");
    let objects = ls(&s.prefix);
    for (i, (m, seq)) in msgs.iter().zip(&seqs).enumerate() {
        let i = i as u64;
        assert_eq!(m["seq"], *seq, "{m}");
        let a = &m["array"];
        assert_eq!(a["dtype"], "uint16", "{m}");
        assert_eq!(a["shape"], serde_json::json!(shape(i)), "{m}");
        assert_eq!(a["bytes"], 2 * shape(i)[0] * shape(i)[1], "{m}");
        assert!(a.get("problem").is_none(), "{m}");
        // The descriptor names a pool segment that exists.
        let segment = format!(
            "{frames}.pool.{}.{}",
            a["pool_id"].as_str().unwrap(),
            a["segment"]
        );
        let pool = find(&objects, &segment).unwrap_or_else(|| panic!("{segment} in {objects:?}"));
        assert_eq!(pool["kind"], "pool");
        assert_eq!(pool["topic"], frames.as_str());
        assert_eq!(
            m["meta"],
            serde_json::json!({"frame": i, "width": 3, "height": 2 + i}),
            "{m}"
        );
    }
    drop(p);
}

// ---------------------------------------------------------------------------------------------
// Hostile and unreadable segments.
// ---------------------------------------------------------------------------------------------

/// The file behind the shmbus name `name`.
fn shm_file(name: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(format!("shmbus.{name}"))
}

/// Writes `value` into the `u32` of `name`'s header at `offset`, as another process could.
fn poke_header(name: &str, offset: usize, value: u32) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_file(name))
        .unwrap();
    f.write_all_at(&value.to_ne_bytes(), offset as u64).unwrap();
}

/// `ls --json` with its own `--timeout`, bounded.
fn ls_within(prefix: &str, timeout: &str, bound: Duration) -> Vec<Value> {
    let r = Pending::start(&["ls", "--json", "--timeout", timeout, prefix]).finish(RUN_LIMIT);
    assert!(r.took < bound, "ls took {:?} (bound {bound:?})", r.took);
    r.json()["objects"].as_array().expect("objects").clone()
}

#[test]
fn stuck_topics_are_reported_within_the_timeout() {
    let s = Scope::new();
    // Topics that this process holds, their state words then written as a hostile or broken
    // process could: closed while in use, or back to not initialised.
    let closed: Vec<String> = (0..4).map(|i| s.name(&format!("closed{i}"))).collect();
    let init: Vec<String> = (0..2).map(|i| s.name(&format!("init{i}"))).collect();
    let fine = s.name("fine");
    let publishers: Vec<shmbus::Publisher<u64>> = closed
        .iter()
        .chain(&init)
        .chain([&fine])
        .map(|n| shmbus::Topic::builder(n).publisher::<u64>().unwrap())
        .collect();
    for n in &closed {
        poke_header(n, wire::STATE_OFFSET, wire::state::CLOSED);
    }
    for n in &init {
        poke_header(n, wire::STATE_OFFSET, wire::state::INIT);
    }

    // ls: six objects that never open, one --timeout (1 s) in all, not one each.
    let bound = Duration::from_secs(4);
    let objects = ls_within(&s.prefix, "1", bound);
    assert_eq!(objects.len(), 7, "{objects:?}");
    for n in &closed {
        let e = find(&objects, n).unwrap();
        assert_eq!(e["kind"], "?", "{e}");
        assert_eq!(e["stuck"], "closed_while_in_use", "{e}");
        let problem = e["problem"].as_str().unwrap();
        assert!(problem.contains("says closed while processes"), "{e}");
        assert_eq!(e["in_use"], true, "{e}");
        assert_eq!(e["stale"], false, "{e}");
        assert_eq!(
            e["type"]["name"], "u64",
            "what the header says is kept: {e}"
        );
    }
    for n in &init {
        let e = find(&objects, n).unwrap();
        assert_eq!(e["kind"], "?", "{e}");
        assert_eq!(e["stuck"], "not_initialised", "{e}");
    }
    let e = find(&objects, &fine).unwrap();
    assert_eq!(e["kind"], "topic", "{e}");
    assert_eq!(e["publishers"], 1, "{e}");
    assert!(e["stuck"].is_null() && e["problem"].is_null(), "{e}");
    // The same with the default --timeout (2 s), and as a table.
    let r = Pending::start(&["ls", &s.prefix]).finish(RUN_LIMIT);
    assert!(r.took < Duration::from_secs(6), "ls took {:?}", r.took);
    let table = r.ok();
    let row = table.lines().find(|l| l.contains(&closed[0])).unwrap();
    assert!(row.starts_with("? "), "{table}");
    assert!(
        row.contains("cannot be opened: its header says closed"),
        "{table}"
    );

    // inspect: what the header says, then exit status 1 with the reason.
    let bound = Duration::from_secs(5);
    let r = Pending::start(&["inspect", "--json", "--timeout", "2", &closed[0]]).finish(RUN_LIMIT);
    r.failed_within(bound, "could not be opened in time: its header says closed");
    let doc: Value = serde_json::from_str(&r.stdout).expect("the document is printed");
    assert_eq!(doc["kind"], "?");
    assert_eq!(doc["stuck"], "closed_while_in_use");
    assert_eq!(doc["topic"]["participants_read"], false);
    assert_eq!(doc["topic"]["qos"]["capacity"], 16);
    let r = Pending::start(&["inspect", "--timeout", "1", &init[0]]).finish(RUN_LIMIT);
    r.failed_within(bound, "never marked ready");
    assert!(r.stdout.contains("problem"), "{}", r.stdout);

    // echo and hz: exit status 1 with the reason, never a hang.
    let r =
        Pending::start(&["echo", &closed[1], "--count", "3", "--timeout", "2"]).finish(RUN_LIMIT);
    r.failed_within(bound, "could not be opened in time: its header says closed");
    let r = Pending::start(&["echo", &init[1], "--count", "3", "--timeout", "1", "--json"])
        .finish(RUN_LIMIT);
    r.failed_within(bound, "never marked ready");
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let r =
        Pending::start(&["hz", &closed[2], "--duration", "5", "--timeout", "1"]).finish(RUN_LIMIT);
    r.failed_within(bound, "says closed");

    // rm: refused (in use) within the bound; --force removes the name.
    let r = Pending::start(&["rm", &closed[3], "--timeout", "1"]).finish(RUN_LIMIT);
    r.failed_within(bound, "in use by");
    let r = Pending::start(&["rm", "--force", "--timeout", "1", &closed[3]]).finish(RUN_LIMIT);
    assert!(r.took < bound, "{:?}", r.took);
    assert!(r.ok().contains("removed"), "{}", r.stdout);
    assert!(!shm_file(&closed[3]).exists());

    // The state word was the only trouble: set back to READY, the topic opens again.
    poke_header(&closed[0], wire::STATE_OFFSET, wire::state::READY);
    let objects = ls_within(&s.prefix, "0.5", bound);
    let e = find(&objects, &closed[0]).unwrap();
    assert_eq!(e["kind"], "topic", "{e}");
    assert_eq!(e["publishers"], 1, "{e}");
    drop(publishers);
}

#[test]
fn gc_lists_unreadable_files_and_removes_those_nobody_holds() {
    let s = Scope::new();
    let version = offset_of!(Header, format_version);
    let future = wire::FORMAT_VERSION + 1;
    // A real segment that nobody holds (a persistent array whose creator has let go), with
    // another format version.
    let old = s.name("old");
    drop(
        shmbus::SharedArray::<f32>::options()
            .persistent()
            .create(&old, &[4])
            .unwrap(),
    );
    poke_header(&old, version, future);
    // The same damage in a pool segment of an array topic whose publisher is gone.
    let frames = s.name("frames");
    let mut p = shmbus::Topic::builder(&frames)
        .pool_linger(Duration::ZERO)
        .array_publisher::<()>()
        .unwrap();
    p.send::<u8>(&[8], &[7; 8], ()).unwrap();
    let pool = ls(&s.prefix)
        .iter()
        .find(|o| o["kind"] == "pool")
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .expect("a pool segment");
    let pool_copy = s.name("pool.copy");
    std::fs::copy(shm_file(&pool), shm_file(&pool_copy)).unwrap();
    poke_header(&pool_copy, version, future);
    drop(p);
    // A topic that this process holds, damaged the same way: in use, so never removed.
    let held = s.name("held");
    let publisher = shmbus::Topic::builder(&held).publisher::<u64>().unwrap();
    poke_header(&held, version, future);
    // Not a shmbus file at all.
    let junk = s.name("junk");
    std::fs::write(shm_file(&junk), [0x5a; 5000]).unwrap();
    // A healthy topic in use, which gc leaves alone and does not list.
    let fine = s.name("fine");
    let fine_publisher = shmbus::Topic::builder(&fine).publisher::<u64>().unwrap();

    let unreadable = |r: &Value| -> Vec<Value> { r["unreadable"].as_array().unwrap().clone() };
    let r = shmbus(&["gc", "--json", &s.prefix]).json();
    assert!(r["removed"].as_array().unwrap().is_empty(), "{r}");
    let listed = unreadable(&r);
    let names: Vec<&str> = listed.iter().map(|u| u["name"].as_str().unwrap()).collect();
    let mut expected = vec![
        held.as_str(),
        junk.as_str(),
        old.as_str(),
        pool_copy.as_str(),
    ];
    expected.sort();
    assert_eq!(names, expected, "{r}");
    for u in &listed {
        assert_eq!(u["removed"], false, "{u}");
        assert_eq!(u["in_use"], u["name"] == held.as_str(), "{u}");
        assert_eq!(u["file"], format!("shmbus.{}", u["name"].as_str().unwrap()));
        let reason = u["reason"].as_str().unwrap();
        if u["name"] == junk.as_str() {
            assert!(reason.contains("bad magic"), "{u}");
        } else {
            assert!(reason.contains(&format!("format version {future}")), "{u}");
        }
    }
    assert!(shm_file(&old).exists() && shm_file(&pool_copy).exists());
    // The table names them and says how to remove them.
    let text = shmbus(&["gc", &s.prefix]).ok().to_owned();
    for n in [&old, &pool_copy, &held, &junk] {
        assert!(text.contains(n.as_str()), "{n} in\n{text}");
    }
    assert!(!text.contains("nothing to remove"), "{text}");
    assert!(text.contains("shmbus gc --unreadable"), "{text}");
    assert!(text.contains("shmbus rm --force NAME"), "{text}");
    assert!(text.contains("kept (in use)"), "{text}");

    // --unreadable removes those nobody holds, and only those.
    let r = shmbus(&["gc", "--unreadable", "--json", &s.prefix]).json();
    for u in unreadable(&r) {
        let held_one = u["name"] == held.as_str();
        assert_eq!(u["removed"], !held_one, "{u}");
    }
    for n in [&old, &pool_copy, &junk] {
        assert!(!shm_file(n).exists(), "{n} removed");
    }
    assert!(shm_file(&held).exists() && shm_file(&fine).exists());
    let left: Vec<String> = ls(&s.prefix)
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, [fine.clone(), held.clone()]);
    let text = shmbus(&["gc", "--unreadable", &s.prefix]).ok().to_owned();
    assert!(
        text.contains(&held) && text.contains("kept (in use)"),
        "{text}"
    );
    // rm --force takes the one in use.
    shmbus(&["rm", "--force", &held]).ok();
    assert!(!shm_file(&held).exists());
    drop(publisher);
    drop(fine_publisher);
    assert!(shmbus(&["gc", &s.prefix])
        .ok()
        .contains("nothing to remove"));
}

//! The `shmbus` binary run as a user runs it, against topics that real processes (the
//! workspace's examples) create, use, and abandon when SIGKILLed.
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
//! `/dev/shm/shmbus.<prefix>*` when dropped, also when a test fails.

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
}

/// Runs `shmbus args`, bounded by [`RUN_LIMIT`].
fn shmbus(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning shmbus");
    let pid = child.id();
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((child.wait(), o, e));
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok((status, stdout, stderr)) => Run {
            code: status.expect("waiting for shmbus").code(),
            stdout,
            stderr,
        },
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("shmbus {args:?} ran longer than {RUN_LIMIT:?}");
        }
    }
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
    assert_eq!(f["topic"]["qos"]["timestamps"], false);
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

    // hz: the producer's 50 fps, and latency only where the topic records times.
    let h = shmbus(&["hz", &frames, "--duration", "2", "--json"]).json();
    let rate = h["rate_hz"].as_f64().expect("a rate");
    assert!((5.0..500.0).contains(&rate), "50 fps measured as {rate}");
    assert!(h["messages"].as_u64().unwrap() >= 10);
    assert!(h["latency_ns"].is_null());
    assert_eq!(h["latency_note"], "n/a (topic has no timestamps)");
    let h = shmbus(&["hz", &pose, "--duration", "1", "--json"]).json();
    assert!(h["rate_hz"].as_f64().unwrap() > 0.0);
    assert!(h["latency_ns"]["mean"].as_f64().unwrap() > 0.0, "{h}");
    assert!(h["latency_note"].is_null());
    let text = shmbus(&["hz", &frames, "--duration", "1.5"]);
    assert!(text.ok().contains("average rate:"), "{}", text.stdout);
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

    let objects = ls(&s.prefix);
    assert_eq!(objects.len(), 3, "{objects:?}");
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

    // gc keeps them; rm removes them and says what they were.
    let r = shmbus(&["gc", "--json", &s.prefix]).json();
    assert!(r["removed"].as_array().unwrap().is_empty());
    let r = shmbus(&["rm", &garbage, &short, &future]);
    let out = r.ok();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("not a readable shmbus segment"), "{out}");
    assert!(s.files().is_empty());
}

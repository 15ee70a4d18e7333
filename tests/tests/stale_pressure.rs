//! Stale cleanup under pressure: pid reuse, zombies, and `gc` racing creators and openers.
//!
//! shmbus decides liveness by lease (a `flock` on every segment a process maps, an OFD byte
//! lock per participant row), which the kernel drops when a process's files are closed. Pids
//! are recorded for display only. These tests give a dead process's pid to a new one on
//! purpose (in a PID namespace of their own, through `ns_last_pid`), keep a killed process as
//! an unreaped zombie, and run `gc` (the library's and the `shmbus` CLI's) in a loop while
//! other processes create, open, use and drop objects.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use shmbus::{Barrier, BarrierError, Mutex, QueueBuilder, SharedArray, Topic, Value};
use shmbus_core::name::Name;
use shmbus_core::segment;
use shmbus_tests::{
    cli_exe, require_root, scope, wait_until, GcLock, Line, Msg, ShmEnv, BULK, STEP,
};

/// The objects a `hold-objects` peer makes under a prefix.
const OBJECTS: [&str; 6] = ["topic", "queue", "mutex", "barrier", "value", "array"];

/// Lines of one `round=` value, by tag (the last of each tag).
fn round_lines<'a>(lines: &'a [Line], round: &str) -> HashMap<&'a str, &'a Line> {
    lines
        .iter()
        .filter(|l| l.fields.get("round").is_some_and(|r| r == round))
        .map(|l| (l.tag.as_str(), l))
        .collect()
}

fn first<'a>(lines: &'a [Line], tag: &str, t: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.tag == tag)
        .unwrap_or_else(|| panic!("no {tag:?} line\n{t}"))
}

/// A creator holding one object of each kind is SIGKILLed, and a new process is given its pid
/// (the first process of a new PID namespace writes `ns_last_pid`), which the creator's headers
/// still record. With that pid alive: `peek` says nobody uses the objects, `gc` removes all six
/// (first set), and opening reclaims them (second set: a topic, queue and barrier are created
/// afresh, a mutex, value and array are not found). Nothing is left in the private `/dev/shm`.
#[test]
fn a_dead_creators_pid_given_to_a_new_process_keeps_nothing_alive() {
    const TEST: &str = "a_dead_creators_pid_given_to_a_new_process_keeps_nothing_alive";
    if !require_root(TEST, "making a PID namespace and writing its ns_last_pid") {
        return;
    }
    let mut s = scope!("pidreuse");
    let Some(env) = ShmEnv::private_or_skip(&mut s, TEST, 64 << 20) else {
        return;
    };
    let prefix = s.name();
    let mut p = env.spawn_in_pid_ns(
        &mut s,
        "pid-reuse",
        &[
            "pid-reuse",
            "--scenario",
            "dead-creator",
            "--prefix",
            &prefix,
        ],
    );
    let (status, lines) = p.wait_output(BULK);
    let t = p.transcript();
    assert!(
        status.signal().is_none() && status.success(),
        "{status}\n{t}"
    );
    assert_eq!(first(&lines, "ns", &t).num("pid"), 1, "{t}");
    for round in ["gc", "open"] {
        let r = round_lines(&lines, round);
        let get = |tag: &str| {
            *r.get(tag)
                .unwrap_or_else(|| panic!("no {tag} line of round {round}\n{t}"))
        };
        assert_eq!(get("killed").num("signal"), 9, "{t}");
        let dead = get("killed").num("pid");
        let files = get("files").get("names");
        for what in OBJECTS {
            assert!(
                files.contains(&format!("shmbus.{prefix}.{round}.{what}")),
                "the killed creator's {what} is still there before cleanup: {files}"
            );
        }
        let reused = get("reused");
        assert_eq!(
            (reused.num("pid"), reused.num("taker")),
            (dead, dead),
            "a new process has the dead creator's pid: {}",
            reused.raw
        );
        let peeks: Vec<&Line> = lines
            .iter()
            .filter(|l| l.tag == "peek" && l.get("round") == round)
            .collect();
        assert_eq!(peeks.len(), OBJECTS.len(), "{t}");
        for l in peeks {
            assert_eq!(
                l.num("creator_pid"),
                dead,
                "the header names the pid: {}",
                l.raw
            );
            assert_eq!(
                l.get("in_use"),
                "false",
                "a live process with the creator's pid does not make it used: {}",
                l.raw
            );
        }
        assert_eq!(get("taker").get("alive"), "true", "{t}");
        if round == "gc" {
            let gc = get("gc");
            assert_eq!(
                (gc.num("removed"), gc.get("all")),
                (6, "true"),
                "{}",
                gc.raw
            );
        } else {
            let opens: HashMap<&str, &Line> = lines
                .iter()
                .filter(|l| l.tag == "open")
                .map(|l| (l.get("kind"), l))
                .collect();
            for kind in ["topic", "queue", "barrier"] {
                let l = opens[kind];
                assert_eq!(
                    (l.get("outcome"), l.get("created")),
                    ("created", "true"),
                    "reclaimed and made afresh: {}",
                    l.raw
                );
            }
            for kind in ["mutex", "value", "array"] {
                assert_eq!(
                    opens[kind].get("outcome"),
                    "not-found",
                    "reclaimed by open: {}",
                    opens[kind].raw
                );
            }
        }
        assert_eq!(get("left").get("names"), "none", "{t}");
    }
    let done = first(&lines, "done", &t);
    assert_eq!(
        (done.get("takers_alive"), done.get("left")),
        ("true", "none"),
        "{t}"
    );
    assert_eq!(env.entries(), Vec::<String>::new(), "files left behind");
}

/// A live owner (topic publisher, queue row, locked mutex, barrier party, value, array) and a
/// joiner of the same objects; the joiner is SIGKILLed and a new, unrelated process is given
/// its pid, the pid the joiner's rows record. Then nothing of the owner's is released, neither
/// while that process lives nor after it died: `gc` in the PID namespace and from outside it
/// (where these pids name other processes or none) removes nothing, a second publisher is
/// refused, the mutex stays locked (a timeout, not owner-died), every object is in use. The
/// joiner's rows alone are reclaimed: a subscriber, a queue participant and a barrier party
/// take them, and a third of each is refused. The owner keeps publishing, putting and counting,
/// and this process sees it.
#[test]
fn a_reused_pid_releases_nothing_of_a_live_participant() {
    const TEST: &str = "a_reused_pid_releases_nothing_of_a_live_participant";
    if !require_root(TEST, "making a PID namespace and writing its ns_last_pid") {
        return;
    }
    let mut s = scope!("pidlive");
    let Some(env) = ShmEnv::private_or_skip(&mut s, TEST, 64 << 20) else {
        return;
    };
    let prefix = s.name();
    let mut p = env.spawn_in_pid_ns(
        &mut s,
        "pid-reuse",
        &[
            "pid-reuse",
            "--scenario",
            "live-participant",
            "--prefix",
            &prefix,
        ],
    );
    let killed = p.expect("killed", BULK);
    let reused = p.expect("reused", STEP);
    assert_eq!(
        reused.num("taker"),
        killed.num("pid"),
        "a new process has the joiner's pid: {}",
        reused.raw
    );
    p.expect("live-ready", STEP);
    // gc from outside the PID namespace: the recorded pids mean nothing here.
    let removed = env.gc(&mut s);
    assert_eq!(removed, Vec::<String>::new(), "gc removed live objects");
    p.send("continue");
    let (status, lines) = p.wait_output(BULK);
    let t = p.transcript();
    assert!(
        status.signal().is_none() && status.success(),
        "{status}\n{t}"
    );
    assert_eq!(first(&lines, "gc", &t).num("removed"), 0, "{t}");
    let kept: Vec<&Line> = lines.iter().filter(|l| l.tag == "kept").collect();
    assert_eq!(kept.len(), 2, "{t}");
    for k in kept {
        assert_eq!(
            (k.get("second_publisher"), k.get("mutex"), k.get("in_use")),
            ("too-many-publishers", "timeout", "true"),
            "the owner's rows, lock and objects are still its own: {}",
            k.raw
        );
    }
    let topic = first(&lines, "topic", &t);
    assert_eq!(
        (topic.num("publishers"), topic.num("subscribers")),
        (1, 1),
        "the owner's publisher row is active, the dead joiner's subscriber row was taken over: {}",
        topic.raw
    );
    assert_eq!(
        first(&lines, "queue", &t).get("third"),
        "too-many-participants",
        "{t}"
    );
    assert_eq!(
        first(&lines, "barrier", &t).get("third"),
        "barrier-full",
        "{t}"
    );
    let works = first(&lines, "owner-works", &t);
    let owner = killed.num("owner");
    assert_eq!(works.num("producer"), owner, "{}", works.raw);
    assert_eq!(works.get("intact"), "true", "{}", works.raw);
    assert_eq!(works.num("item"), owner * 1000 + 1, "{}", works.raw);
    assert_eq!(works.num("value"), 1, "{}", works.raw);
    let done = first(&lines, "done", &t);
    assert_eq!(
        (done.get("owner_exit"), done.get("left")),
        ("0", "none"),
        "{t}"
    );
    assert_eq!(env.entries(), Vec::<String>::new(), "files left behind");
}

/// The state letter of process `pid` (`/proc/PID/stat`), e.g. `'Z'` for a zombie.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A zombie (a process that exited but was not reaped) holds no lease: the kernel closes a
/// process's files when it exits, before it becomes a zombie, and every shmbus lease is a lock
/// on an open file. A peer holding two sets of objects (one also joined by this test) is
/// SIGKILLed and left unreaped; while it is a zombie, and with its pid still taken by it: the
/// set only it used is unused (`peek`) and removed by `gc`; in the set this test keeps alive,
/// its publisher row, queue row and barrier party are taken over, and its mutex is taken with
/// `owner_died`, at once. It is still a zombie at the end.
#[test]
fn a_zombie_holds_no_lease() {
    let mut s = scope!("zombie");
    let _gc = GcLock::shared(); // another test's gc() must not remove the stale set first
    let (shared, alone) = (s.name(), s.name());
    let mut z = s.spawn(
        "zombie-to-be",
        &["hold-objects", "--prefix", &shared, "--prefix", &alone],
    );
    z.expect("holding", STEP);
    let zpid = z.pid();
    let obj = |p: &str, w: &str| format!("{p}.{w}");

    // This process joins the first set, which keeps it alive.
    let topic = Topic::builder(&obj(&shared, "topic"))
        .max_publishers(1)
        .max_subscribers(4);
    let sub = topic.subscriber::<Msg>().expect("subscriber");
    let queue = QueueBuilder::new(&obj(&shared, "queue"))
        .existing()
        .open::<u64>()
        .expect("queue");
    let barrier = Barrier::open(&obj(&shared, "barrier"), 2).expect("barrier");
    let value = Value::<u64>::open(&obj(&shared, "value")).expect("value");
    let array = SharedArray::<u64>::attach(&obj(&shared, "array")).expect("array");
    let m = Mutex::<u64>::open(&obj(&shared, "mutex")).expect("mutex");
    assert_eq!(sub.stats().publishers, 1);

    // SIGKILL, not reaped: a zombie.
    let pid = rustix::process::Pid::from_raw(zpid as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
    assert!(
        wait_until(STEP, || proc_state(zpid) == Some('Z')),
        "the killed peer did not become a zombie: {:?}",
        proc_state(zpid)
    );

    // The set only the zombie used: unused, and gc removes it.
    for w in OBJECTS {
        let info = segment::peek(&Name::new(&obj(&alone, w)).unwrap()).expect("peek");
        assert!(!info.in_use, "a zombie keeps {w} in use: {info:?}");
        assert_eq!(info.creator_pid, zpid, "{info:?}");
    }
    let report = segment::gc_report_prefix(&format!("{alone}."), false).expect("gc");
    let mut removed = report.removed.clone();
    removed.sort();
    let mut expected: Vec<String> = OBJECTS
        .iter()
        .map(|w| format!("shmbus.{}", obj(&alone, w)))
        .collect();
    expected.sort();
    assert_eq!(removed, expected, "gc removes what only a zombie used");

    // The set this process keeps alive: the zombie's rows and lock are free to take.
    let start = Instant::now();
    let g = m
        .lock_timeout(STEP)
        .expect("the zombie's lock is taken over");
    assert!(g.owner_died(), "the zombie died holding the mutex");
    assert_eq!(
        *g,
        u64::from(zpid),
        "the zombie's value, left as it wrote it"
    );
    drop(g);
    let mut publisher = topic
        .publisher::<Msg>()
        .expect("the zombie's publisher row (the only one) is taken over");
    let other = QueueBuilder::new(&obj(&shared, "queue"))
        .existing()
        .open::<u64>()
        .expect("the zombie's queue row (one of two) is taken over");
    assert!(
        matches!(barrier.wait_timeout(STEP), Err(BarrierError::PartyDied)),
        "the zombie is a party that will never arrive"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}: a zombie's leases should be free at once",
        start.elapsed()
    );
    publisher.send(Msg::new(1, 1)).expect("send");
    assert_eq!(
        sub.recv_timeout(STEP).expect("receive").index,
        1,
        "the new publisher's message"
    );
    other.put(5).expect("put");
    assert_eq!(queue.get_timeout(STEP).expect("get"), 5);
    assert_eq!(value.load().expect("load"), 0);
    assert_eq!(array.len(), 64);
    assert_eq!(
        proc_state(zpid),
        Some('Z'),
        "still a zombie: nothing above reaped it"
    );
    drop((publisher, other, sub, queue, barrier, value, array, m));
    z.kill(); // reaps it
    for w in OBJECTS {
        s.assert_gone(&obj(&shared, w));
    }
}

/// Three processes create, open (a second handle, never creating), use and drop a topic, a
/// queue, a mutex, a value, an array and shared state in a loop, and open (never creating) each
/// other's, while one process runs the library's `gc()` in a loop and another `shmbus gc` (the
/// CLI, which also peeks every file) in a loop. No live object is ever removed (the second
/// handle always opens the first one's segment and sees what it wrote), every open of another
/// process's object either succeeds or is `NotFound`, no creation fails, every `shmbus gc`
/// exits 0, and after a last `gc` once everyone is gone nothing is left. In a private
/// `/dev/shm` when one can be made; otherwise in the machine's, under the gc lock.
#[test]
fn gc_racing_creators_and_openers_loses_nothing() {
    let mut s = scope!("gcrace2");
    let cli = cli_exe().to_string_lossy().into_owned();
    let env = ShmEnv::private_or_global(&mut s);
    let _gc = (!env.is_private()).then(GcLock::exclusive);
    let prefix = s.name();
    const WORKERS: u32 = 3;
    let ms = "3000";
    let workers_arg = WORKERS.to_string();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let w = w.to_string();
        workers.push(env.spawn(
            &mut s,
            "worker",
            &[
                "gc-race-user",
                "--prefix",
                &prefix,
                "--worker",
                &w,
                "--workers",
                &workers_arg,
                "--for-ms",
                ms,
            ],
        ));
    }
    let mut gc = env.spawn(&mut s, "gc loop", &["gc", "--for-ms", ms]);
    let mut cli_args = vec!["gc-cli-loop", "--cli", &cli, "--for-ms", ms];
    if !env.is_private() {
        cli_args.extend(["--prefix", prefix.as_str()]);
    }
    let mut gc_cli = env.spawn(&mut s, "shmbus gc loop", &cli_args);

    let (mut iterations, mut stale, mut other) = (0, 0, 0);
    for w in &mut workers {
        let l = w.finish("summary", BULK);
        assert_eq!(l.num("violations"), 0, "a live object was lost: {}", l.raw);
        assert_eq!(
            l.num("other_errors"),
            0,
            "an open failed with something other than NotFound: {}",
            l.raw
        );
        assert!(l.num("iterations") >= 12, "too few rounds: {}", l.raw);
        assert!(l.num("created") > 0, "{}", l.raw);
        iterations += l.num("iterations");
        stale += l.num("stale");
        other += l.num("other_ok") + l.num("other_not_found");
    }
    let g = gc.finish("gc", BULK);
    assert!(g.num("rounds") > 0, "{}", g.raw);
    let c = gc_cli.finish("gc-cli", BULK);
    assert!(c.num("rounds") > 0, "{}", c.raw);
    assert_eq!(c.num("failed"), 0, "shmbus gc failed: {}", c.raw);

    // Leavers that raced with a probe (the CLI peeks) may leave files behind: the next gc,
    // now that every user is gone, removes them all.
    let ours = |env: &ShmEnv| -> Vec<String> {
        let lead = format!("shmbus.{prefix}.");
        env.entries()
            .into_iter()
            .filter(|f| f.starts_with(&lead))
            .collect()
    };
    let before = ours(&env);
    let mut removed = env.gc(&mut s);
    removed.retain(|f| f.starts_with(&format!("shmbus.{prefix}.")));
    removed.sort();
    assert_eq!(removed, before, "the last gc removes exactly what was left");
    assert_eq!(ours(&env), Vec::<String>::new(), "files left behind");
    eprintln!(
        "gc race: {iterations} rounds, {other} opens of others' objects, {stale} stale files \
         met, gc {} rounds removing {}, shmbus gc {} rounds removing {}, {} left for the last gc",
        g.num("rounds"),
        g.num("count"),
        c.num("rounds"),
        c.num("removed"),
        before.len()
    );
}

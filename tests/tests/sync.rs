//! Named semaphores and events across processes: a post or set in one process releases waiters
//! in others, one per unit or set (semaphore, auto-reset event) or all of them (manual-reset).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shmbus::{Event, EventMode, OpenError, SegmentError, Semaphore};
use shmbus_tests::{scope, Line, Peer, STEP};

/// How long the waiters of these tests wait at most: far longer than any test step takes, so a
/// timeout means a lost wake-up, and bounded, so a lost wake-up fails the test instead of hanging.
const WAIT_MS: &str = "8000";

/// How long a waiter that should stay asleep is watched to stay so.
const QUIET: Duration = Duration::from_millis(300);

/// Waits (at most `timeout`) for the first of `waiters` still without a result to print its
/// `result` line; records it in `results` and returns its index.
fn next_result(
    waiters: &mut [Peer],
    results: &mut [Option<Line>],
    timeout: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, w) in waiters.iter_mut().enumerate() {
            if results[i].is_some() {
                continue;
            }
            for line in w.pending() {
                assert_ne!(line.tag, "error", "waiter {i}: {}", line.raw);
                if line.tag == "result" {
                    results[i] = Some(line);
                    return Some(i);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Asserts that no waiter without a result prints one within [`QUIET`].
fn assert_still_waiting(waiters: &mut [Peer], results: &mut [Option<Line>], after: &str) {
    if let Some(i) = next_result(waiters, results, QUIET) {
        panic!(
            "waiter {i} returned {} {after}: {}",
            results[i].as_ref().map_or("", |l| l.get("outcome")),
            results[i].as_ref().map_or("", |l| &l.raw)
        );
    }
}

fn assert_woken(line: &Line, word: &str) {
    assert_eq!(line.get("outcome"), word, "{}", line.raw);
    assert!(
        line.num("elapsed_ms") < WAIT_MS.parse::<u64>().unwrap(),
        "{}",
        line.raw
    );
}

/// A semaphore posted by one process releases a waiter blocked in another, one waiter per unit,
/// whichever process posts.
#[test]
fn semaphore_posted_in_one_process_releases_a_waiter_in_another() {
    let mut s = scope!("sem");
    let name = s.name();
    let sem = Semaphore::open_or_create(&name, 0).expect("create the semaphore");

    let mut waiters: Vec<Peer> = (0..2)
        .map(|i| {
            s.spawn(
                &format!("waiter {i}"),
                &["sem-wait", "--name", &name, "--timeout-ms", WAIT_MS],
            )
        })
        .collect();
    for w in &mut waiters {
        assert_eq!(w.expect("ready", STEP).num("value"), 0);
    }
    let mut results = vec![None, None];
    assert_still_waiting(&mut waiters, &mut results, "before any post");

    // One unit from another process releases exactly one waiter.
    let mut poster = s.spawn("poster", &["sem-post", "--name", &name]);
    poster.finish("posted", STEP);
    let first = next_result(&mut waiters, &mut results, STEP).expect("a waiter released");
    assert_woken(results[first].as_ref().unwrap(), "acquired");
    assert_still_waiting(&mut waiters, &mut results, "with one unit posted and taken");
    assert_eq!(sem.value(), 0);

    // One unit from this process releases the other.
    sem.post().expect("post");
    let second = next_result(&mut waiters, &mut results, STEP).expect("the other waiter");
    assert_ne!(first, second);
    assert_woken(results[second].as_ref().unwrap(), "acquired");
    for w in &mut waiters {
        w.wait(STEP);
    }
    assert_eq!(sem.value(), 0);

    // Units posted with nobody waiting are kept for later waiters.
    let mut poster = s.spawn(
        "poster of 2",
        &["sem-post", "--name", &name, "--count", "2"],
    );
    poster.finish("posted", STEP);
    assert_eq!(sem.value(), 2);
    for i in 0..2 {
        let mut late = s.spawn(
            &format!("late waiter {i}"),
            &["sem-wait", "--name", &name, "--timeout-ms", WAIT_MS],
        );
        assert_woken(&late.finish("result", STEP), "acquired");
    }
    let mut last = s.spawn(
        "waiter on an empty semaphore",
        &["sem-wait", "--name", &name, "--timeout-ms", "100"],
    );
    assert_eq!(last.finish("result", STEP).get("outcome"), "timeout");

    drop(sem);
    s.assert_gone(&name);
}

/// An auto-reset event set by a child process wakes exactly one of the waiters blocked in other
/// processes; every further set wakes exactly one more.
#[test]
fn auto_reset_event_set_by_a_child_wakes_exactly_one_waiter() {
    let mut s = scope!("eventauto");
    let name = s.name();
    let event = Event::open_or_create(&name, EventMode::AutoReset, false).expect("create");

    let n = 3;
    let mut waiters: Vec<Peer> = (0..n)
        .map(|i| {
            s.spawn(
                &format!("waiter {i}"),
                &[
                    "event-wait",
                    "--name",
                    &name,
                    "--mode",
                    "auto",
                    "--timeout-ms",
                    WAIT_MS,
                ],
            )
        })
        .collect();
    for w in &mut waiters {
        assert_eq!(w.expect("ready", STEP).get("mode"), "auto");
    }
    let mut results = vec![None; n];
    assert_still_waiting(&mut waiters, &mut results, "before any set");

    let mut woken = Vec::new();
    for round in 0..n {
        let mut setter = s.spawn(&format!("setter {round}"), &["event-set", "--name", &name]);
        setter.finish("set", STEP);
        let i = next_result(&mut waiters, &mut results, STEP)
            .unwrap_or_else(|| panic!("set {round} woke nobody"));
        assert_woken(results[i].as_ref().unwrap(), "woken");
        woken.push(i);
        // Exactly one: the others sleep on, and the set was consumed.
        assert_still_waiting(&mut waiters, &mut results, &format!("after set {round}"));
        assert!(!event.is_set(), "set {round} was not consumed");
    }
    woken.sort_unstable();
    assert_eq!(woken, (0..n).collect::<Vec<_>>());
    for w in &mut waiters {
        w.wait(STEP);
    }

    drop(event);
    s.assert_gone(&name);
}

/// A manual-reset event set by a child process wakes every waiter, stays set for later waiters,
/// and a reset from another process makes later waits time out again.
#[test]
fn manual_reset_event_wakes_all_waiters() {
    let mut s = scope!("eventmanual");
    let name = s.name();
    let event = Event::open_or_create(&name, EventMode::ManualReset, false).expect("create");

    let n = 3;
    let wait_args: [&str; 7] = [
        "event-wait",
        "--name",
        &name,
        "--mode",
        "manual",
        "--timeout-ms",
        WAIT_MS,
    ];
    let mut waiters: Vec<Peer> = (0..n)
        .map(|i| s.spawn(&format!("waiter {i}"), &wait_args))
        .collect();
    for w in &mut waiters {
        assert_eq!(w.expect("ready", STEP).get("mode"), "manual");
    }
    let mut results = vec![None; n];
    assert_still_waiting(&mut waiters, &mut results, "before the set");

    let mut setter = s.spawn("setter", &["event-set", "--name", &name]);
    setter.finish("set", STEP);
    for w in &mut waiters {
        assert_woken(&w.finish("result", STEP), "woken");
    }
    assert!(event.is_set(), "a manual-reset event stays set");

    // Later waiters pass at once while it is set...
    let mut late = s.spawn("late waiter", &wait_args);
    assert_woken(&late.finish("result", STEP), "woken");

    // ...and wait again once another process resets it.
    let mut resetter = s.spawn("resetter", &["event-set", "--name", &name, "--reset"]);
    resetter.finish("reset", STEP);
    assert!(!event.is_set());
    let mut after = s.spawn(
        "waiter after the reset",
        &["event-wait", "--name", &name, "--timeout-ms", "100"],
    );
    assert_eq!(after.finish("result", STEP).get("outcome"), "timeout");

    drop(event);
    s.assert_gone(&name);
}

/// Opening an event with the other mode fails with a wrong-type error naming both modes, in
/// this process and in another.
#[test]
fn an_event_of_the_other_mode_is_a_wrong_type() {
    let mut s = scope!("eventmode");
    let name = s.name();
    let event = Event::open_or_create(&name, EventMode::AutoReset, false).expect("create");
    match Event::open_or_create(&name, EventMode::ManualReset, false) {
        Err(e @ OpenError::Segment(SegmentError::WrongType { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("event/auto") && msg.contains("event/manual"),
                "{msg}"
            );
        }
        other => panic!("expected a wrong type, got {other:?}"),
    }
    assert_eq!(
        Event::open(&name).expect("open either mode").mode(),
        EventMode::AutoReset
    );
    let mut other = s.spawn(
        "manual waiter",
        &[
            "event-wait",
            "--name",
            &name,
            "--mode",
            "manual",
            "--timeout-ms",
            "100",
        ],
    );
    let err = other.expect("error", STEP);
    assert_eq!(err.get("code"), "wrong-type", "{}", err.raw);
    assert!(
        err.get("msg").contains("event/auto") && err.get("msg").contains("event/manual"),
        "{}",
        err.raw
    );
    other.wait(STEP);

    drop(event);
    s.assert_gone(&name);
}

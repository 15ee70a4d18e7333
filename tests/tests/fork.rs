//! Fork semantics, with a real `fork()` in a peer process: the parent's lease dies with the
//! parent, the child's copies of participant handles refuse to act (and dropping them leaves
//! the parent alone), the child can join as a participant of its own, and objects without an
//! identity (arrays) keep working in the child after the parent died.

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Duration;

use shmbus::{EventMode, RecvError, Topic};
use shmbus_core::liveness;
use shmbus_core::segment::shm_path;
use shmbus_core::wire::lease;
use shmbus_tests::{scope, wait_until, Msg, STEP};

/// How many publisher rows of `topic` have a live lease holder.
fn live_publishers(topic: &str) -> usize {
    let name = shmbus::Name::new(topic).expect("valid name");
    let file = File::open(shm_path(&name)).expect("the topic exists");
    (0..2)
        .filter(|&p| liveness::is_held(file.as_fd(), lease::topic_publisher(p)).unwrap_or(false))
        .count()
}

/// Waits for a line of each tag, in whatever order the two processes print them.
fn expect_each(peer: &mut shmbus_tests::Peer, tags: &[&str]) -> Vec<shmbus_tests::Line> {
    let mut found: Vec<Option<shmbus_tests::Line>> = vec![None; tags.len()];
    let ok = wait_until(STEP, || {
        for line in peer.pending() {
            assert_ne!(line.tag, "error", "{}", line.raw);
            if let Some(i) = tags.iter().position(|t| *t == line.tag) {
                found[i].get_or_insert(line);
            }
        }
        found.iter().all(Option::is_some)
    });
    assert!(ok, "no line of each of {tags:?}:\n{}", peer.transcript());
    found.into_iter().map(Option::unwrap).collect()
}

fn receive_from(sub: &shmbus::Subscriber<Msg>, producer: u64, count: u64) {
    let mut next = 0;
    while next < count {
        match sub.recv_timeout(STEP) {
            Ok(m) => {
                assert!(m.is_intact(), "a torn message: {:?}", *m);
                if m.producer == producer {
                    assert_eq!(m.index, next, "in order, none lost");
                    next += 1;
                }
            }
            Err(RecvError::Lagged(n)) => panic!("lagged by {n} on a 64-entry ring"),
            Err(e) => panic!("waiting for message {next} of {producer}: {e}"),
        }
    }
}

#[test]
fn a_forked_child_neither_inherits_the_lease_nor_acts_as_its_parent() {
    let mut s = scope!("fork");
    let topic = s.name();
    let array = s.name();
    let go = s.name();
    let sub = Topic::builder(&topic)
        .max_publishers(2)
        .capacity(64)
        .subscriber::<Msg>()
        .expect("subscriber");
    let event = shmbus::Event::open_or_create(&go, EventMode::ManualReset, false).expect("event");
    let mut peer = s.spawn(
        "forker",
        &[
            "fork", "--topic", &topic, "--array", &array, "--go", &go, "--count", "10",
        ],
    );
    // Both processes act after the fork, in either order: the parent through its handles, while
    // the child finds the same handles refusing to act, and drops them.
    let lines = expect_each(
        &mut peer,
        &[
            "forked",
            "parent-published",
            "child-checked",
            "child-dropped",
        ],
    );
    let (parent, child) = (lines[0].num("parent"), lines[0].num("child"));
    assert_ne!(parent, child);
    receive_from(&sub, parent, 10);
    let checked = &lines[2];
    assert_eq!(checked.get("publish"), "used-after-fork", "{}", checked.raw);
    assert_eq!(checked.get("loan"), "used-after-fork", "{}", checked.raw);
    assert_eq!(checked.get("receive"), "used-after-fork", "{}", checked.raw);
    assert_eq!(
        checked.get("queue_put"),
        "used-after-fork",
        "{}",
        checked.raw
    );
    assert_eq!(
        checked.get("queue_get"),
        "used-after-fork",
        "{}",
        checked.raw
    );
    // ... and the parent's queue item is still there (the child's drop reclaimed nothing).
    let q = format!("{topic}.q");
    s.track_file(shmbus_tests::shm_file(&q));
    let queue = shmbus::QueueBuilder::new(&q)
        .existing()
        .open::<Msg>()
        .expect("the parent's queue");
    assert_eq!((queue.len(), queue.stats().put), (1, 1));
    // The child dropping its copies left the parent's publisher row and lease as they were.
    assert_eq!(live_publishers(&topic), 1, "the parent's lease is held");
    assert_eq!(
        sub.stats().publishers,
        1,
        "the parent's row is still active"
    );

    // Kill the parent: its lease must go with it, although the child lives on.
    peer.kill();
    assert!(
        wait_until(Duration::from_secs(2), || live_publishers(&topic) == 0),
        "a dead parent's publisher lease is still held (inherited by its child)"
    );
    assert!(
        rustix::process::test_kill_process(rustix::process::Pid::from_raw(child as i32).unwrap())
            .is_ok(),
        "the child outlives its parent"
    );

    // The child joins as a publisher of its own, and reads the array the dead parent made.
    event.set();
    let published = peer.expect("child-published", STEP);
    assert_eq!(published.num("n"), 10);
    receive_from(&sub, child, 10);
    let arr = peer.expect("child-array", STEP);
    assert_eq!(arr.num("sum"), 7 * 1024, "the array is intact in the child");
    peer.expect("child-done", STEP);
    assert!(
        wait_until(STEP, || !shm_path(&shmbus::Name::new(&array).unwrap())
            .exists()),
        "the scoped array is removed once its last user (the child) is gone"
    );
}

#[test]
fn a_forked_child_awaits_through_a_waiter_thread_of_its_own() {
    let mut s = scope!("fork-async");
    let (parent_topic, child_topic) = (s.name(), s.name());
    let mut peer = s.spawn(
        "forker",
        &[
            "fork-async",
            "--topic",
            &parent_topic,
            "--child-topic",
            &child_topic,
        ],
    );
    let child = peer.expect("child-async", STEP);
    assert_eq!(child.get("inherited"), "used-after-fork", "{}", child.raw);
    assert_eq!(child.get("own"), "received", "{}", child.raw);
    let done = peer.expect("parent-done", STEP);
    assert_eq!(done.num("status"), 0, "{}", done.raw);
    assert!(peer.wait(STEP).success());
}

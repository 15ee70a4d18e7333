//! Segments whose every user was SIGKILLed: reclaimed by the next open, or by `gc()`.

use std::os::unix::fs::MetadataExt;

use shmbus::{Mutex, OpenError, RecvError, Topic};
use shmbus_core::name::Name;
use shmbus_core::segment::{self, Kind, SegmentError};
use shmbus_tests::{scope, shm_file, GcLock, Msg, ShmEnv, STEP};

/// Scenario 12: a process creates a topic and publishes into it, and is SIGKILLed. The file
/// stays (nobody removed it), `peek` says nobody uses it, and the next `open_or_create` (here: a
/// publisher) reclaims it and starts a fresh topic under the name, with none of the old messages.
#[test]
fn stale_topic_is_reclaimed_by_the_next_open() {
    let mut s = scope!("staleopen");
    let name = s.name();
    let path = shm_file(&name);
    let _gc = GcLock::shared(); // keep another test's gc() from reclaiming it first
    let mut creator = s.spawn(
        "creator",
        &["publish", "--count", "5", "--hold", "--topic", &name],
    );
    creator.expect("done", STEP);
    creator.kill();
    let old = std::fs::metadata(&path).expect("a SIGKILLed last user leaves its file behind");
    let info = segment::peek(&Name::new(&name).unwrap()).expect("peek");
    assert!(!info.in_use, "nobody uses it any more: {info:?}");
    assert_eq!((info.kind, info.counters[0]), (Kind::Topic, 5), "{info:?}");

    let publ = Topic::builder(&name)
        .publisher::<Msg>()
        .expect("open_or_create over a stale topic");
    assert!(
        publ.created_topic(),
        "the stale topic was reclaimed and a new one created"
    );
    assert_ne!(
        std::fs::metadata(&path).expect("the new topic").ino(),
        old.ino(),
        "a new file"
    );
    assert_eq!(publ.stats().published, 0, "a fresh topic");
    let sub = Topic::builder(&name)
        .history(16)
        .subscriber::<Msg>()
        .expect("subscriber");
    assert_eq!(
        sub.try_recv().unwrap_err(),
        RecvError::Empty,
        "none of the old messages"
    );
    drop((publ, sub));
    s.assert_gone(&name);
}

/// Scenario 12: the same for a subscriber's open and for a mutex whose holder was killed while
/// holding it: `open` reclaims the stale mutex and reports it as not found; `open_or_create`
/// then makes a fresh, unlocked one (no `OwnerDied` carried over from the dead one).
#[test]
fn stale_mutex_and_subscriber_topic_are_reclaimed_by_open() {
    let mut s = scope!("stalemutex");
    let _gc = GcLock::shared();

    let name = s.name();
    let mut holder = s.spawn("holder", &["hold-lock", "--name", &name]);
    holder.expect("locked", STEP);
    holder.kill();
    assert!(
        shm_file(&name).exists(),
        "a SIGKILLed last user leaves its file behind"
    );
    match Mutex::<u64>::open(&name) {
        Err(OpenError::Segment(SegmentError::NotFound(_))) => {}
        other => {
            panic!("expected the stale mutex to be reclaimed and reported NotFound, got {other:?}")
        }
    }
    assert!(!shm_file(&name).exists(), "reclaimed");
    let m = Mutex::open_or_create(&name, 0u64).expect("a fresh mutex");
    assert!(m.created());
    let g = m.lock_timeout(STEP).expect("lock");
    assert_eq!(
        (g.owner_died(), *g),
        (false, 0),
        "clean, with the initial value"
    );
    drop(g);
    drop(m);
    s.assert_gone(&name);

    let name = s.name();
    let mut sub = s.spawn("subscriber", &["hold", "--topic", &name]);
    sub.expect("holding", STEP);
    sub.kill();
    assert!(shm_file(&name).exists());
    let again = Topic::builder(&name)
        .subscriber::<Msg>()
        .expect("subscriber over a stale topic");
    drop(again);
    s.assert_gone(&name);
}

/// Scenario 12: `gc()` removes a topic whose users were all SIGKILLed and a temporary file left
/// by a creator that died, and leaves alone a topic in use and a foreign file under our prefix.
/// Runs in a private `/dev/shm` when one can be made, so that it removes nobody else's files;
/// otherwise in the machine's under the gc lock.
#[test]
fn gc_removes_stale_segments_and_nothing_else() {
    let mut s = scope!("gc");
    let env = ShmEnv::private_or_global(&mut s);
    // Exclusive from the start in the machine's /dev/shm: the stale topic must stay until this
    // test's own gc() (see GcLock).
    let _gc = (!env.is_private()).then(GcLock::exclusive);

    let stale = s.name();
    let mut creator = env.spawn(
        &mut s,
        "creator",
        &["publish", "--count", "3", "--hold", "--topic", &stale],
    );
    creator.expect("done", STEP);
    creator.kill();
    assert!(
        env.file(&stale).exists(),
        "a SIGKILLed last user leaves its file behind"
    );

    let live = s.name();
    let mut user = env.spawn(
        &mut s,
        "live user",
        &["publish", "--count", "0", "--hold", "--topic", &live],
    );
    user.expect("done", STEP);

    let foreign = s.name();
    std::fs::write(env.file(&foreign), vec![0x5a; 8192]).expect("foreign file");

    let removed = env.gc(&mut s);
    let stale_file = format!("shmbus.{stale}");
    assert!(
        removed.contains(&stale_file),
        "gc removed {removed:?}, not {stale_file}"
    );
    assert!(!env.file(&stale).exists());
    assert!(env.file(&live).exists(), "gc removed a topic in use");
    assert!(env.file(&foreign).exists(), "gc removed a foreign file");
    if env.is_private() {
        assert_eq!(
            removed.len(),
            1,
            "a private /dev/shm holds nothing else to remove: {removed:?}"
        );
    }

    // The live topic still works after gc, and its last user out removes it.
    let mut reader = env.spawn(&mut s, "reader", &["open", "--topic", &live]);
    reader.finish("ok", STEP);
    user.kill();
    let mut last = env.spawn(&mut s, "last user", &["open", "--topic", &live]);
    last.finish("ok", STEP); // reclaims the stale topic, creates a new one, leaves: removes it
    assert!(!env.file(&live).exists());
    std::fs::remove_file(env.file(&foreign)).expect("remove the foreign file");
}

/// `gc()` running at the same time as processes that create and drop topics must never make a
/// creation fail, nor remove a topic in use. In a private `/dev/shm` when one can be made;
/// otherwise in the machine's, holding the gc lock exclusively for the whole race (gc in a loop
/// would remove the stale files other tests keep on purpose).
#[test]
fn gc_racing_with_creators_never_breaks_a_creation() {
    let mut s = scope!("gcrace");
    let env = ShmEnv::private_or_global(&mut s);
    let _gc = (!env.is_private()).then(GcLock::exclusive);
    let names = [s.name(), s.name()];
    let mut gc = env.spawn(&mut s, "gc loop", &["gc", "--for-ms", "1500"]);
    let mut churners: Vec<_> = names
        .iter()
        .map(|n| {
            env.spawn(
                &mut s,
                "churn",
                &["churn", "--topic", n, "--for-ms", "1500"],
            )
        })
        .collect();
    for c in &mut churners {
        let line = c.finish("churn", STEP);
        assert!(line.num("ok") > 0, "{}", line.raw);
        assert_eq!(
            line.num("errors"),
            0,
            "creations failed while gc ran: {}",
            line.raw
        );
    }
    let line = gc.finish("gc", STEP);
    assert!(line.num("rounds") > 0);
    for n in &names {
        assert!(!env.file(n).exists());
    }
}

/// Found by the chaos harness: a segment whose last user removes it between `gc`'s listing of
/// `/dev/shm` and its open was reported as an unreadable file ("cannot open it: No such file
/// or directory"), and with `remove_unreadable` its name was unlinked blindly, whatever file
/// had taken it meanwhile. A file that is gone is nothing to report: here `gc` over this test's
/// names races with processes that create and drop topics, and reports nothing unreadable.
#[test]
fn gc_racing_with_leavers_reports_nothing_unreadable() {
    let mut s = scope!("gcgone");
    let env = ShmEnv::private_or_global(&mut s);
    let _gc = (!env.is_private()).then(GcLock::exclusive);
    let names = [s.name(), s.name(), s.name()];
    let prefix = format!("t-{}-", std::process::id());
    let mut gc = env.spawn(
        &mut s,
        "gc loop",
        &["gc", "--for-ms", "1500", "--prefix", &prefix],
    );
    let mut churners: Vec<_> = names
        .iter()
        .map(|n| {
            env.spawn(
                &mut s,
                "churn",
                &["churn", "--topic", n, "--for-ms", "1500"],
            )
        })
        .collect();
    for c in &mut churners {
        let line = c.finish("churn", STEP);
        assert!(line.num("ok") > 0, "{}", line.raw);
    }
    let line = gc.finish("gc", STEP);
    assert!(line.num("rounds") > 0, "{}", line.raw);
    assert_eq!(
        line.num("unreadable"),
        0,
        "files that went away were reported unreadable: {}\n{}",
        line.raw,
        gc.stderr_text()
    );
}

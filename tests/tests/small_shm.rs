//! A small `/dev/shm` (Docker's default of 64 MiB), filled up: every creation is refused with
//! `OutOfSpace`, never a `SIGBUS`, and everything made before keeps working.
//!
//! The peers run in a private tmpfs on `/dev/shm` (a mount namespace of their own, see
//! `ShmEnv`), so the machine's `/dev/shm` is never filled. Needs root, or a kernel that lets
//! this user make a user namespace; otherwise the tests fail (or are reported as `SKIPPED:`
//! with `SHMBUS_ALLOW_SKIP=1`).

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;

use shmbus_tests::{scope, skip_or_fail, Line, ShmEnv, BULK, STEP};

const MIB: u64 = 1 << 20;

/// The smallest segment: a header page and one page of payload.
const SMALLEST: u64 = 8192;

/// Every kind of creation the peer tries once `/dev/shm` is full.
const KINDS: [&str; 13] = [
    "topic",
    "serde-topic",
    "queue",
    "serde-queue",
    "value",
    "shared",
    "mutex",
    "semaphore",
    "event",
    "barrier",
    "array",
    "array-topic",
    "pool-growth",
];

/// The `works` lines of one round, by kind.
fn works(lines: &[Line], when: &str) -> HashMap<String, Line> {
    lines
        .iter()
        .filter(|l| l.tag == "works" && l.fields.get("when").is_some_and(|w| w == when))
        .map(|l| (l.get("kind").to_owned(), l.clone()))
        .collect()
}

/// Checks the `works` lines of round `round` (`when`): every object answered as it should.
fn check_round(lines: &[Line], round: u64, when: &str, t: &str) {
    let w = works(lines, when);
    let get = |kind: &str| {
        w.get(kind)
            .unwrap_or_else(|| panic!("no `works kind={kind} when={when}` line\n{t}"))
    };
    let topic = get("topic");
    assert_eq!(topic.num("round_trips"), 100, "{}", topic.raw);
    assert_eq!(topic.get("late_subscriber"), "true", "{}", topic.raw);
    let queue = get("queue");
    let first = 100 * (round - 1);
    assert_eq!(
        queue.get("got"),
        format!("{first},{},{}", first + 1, first + 2),
        "the items put in the previous round: {}",
        queue.raw
    );
    assert_eq!(queue.num("again"), 42, "{}", queue.raw);
    let serde = get("serde-queue");
    assert_eq!(
        (serde.num("got"), serde.get("as_put")),
        (2, "true"),
        "{}",
        serde.raw
    );
    let value = get("value");
    assert_eq!(
        value.num("after"),
        value.num("old") + 5,
        "fetch_add: {}",
        value.raw
    );
    assert_eq!(value.num("before"), value.num("old"), "{}", value.raw);
    let shared = get("shared");
    assert_eq!(shared.get("complete"), "true", "{}", shared.raw);
    assert_eq!(shared.num("n"), 1 + 10 * round, "{}", shared.raw);
    let array = get("array");
    assert_eq!(array.num("generation"), round, "{}", array.raw);
    for k in ["intact", "rewritten", "attached"] {
        assert_eq!(array.get(k), "true", "{k}: {}", array.raw);
    }
    let frames = get("array-topic");
    assert_eq!(frames.num("frames"), 20, "{}", frames.raw);
    assert_eq!(
        frames.num("segments_before"),
        frames.num("segments_after"),
        "frames of a size the pool has blocks for need no new segment: {}",
        frames.raw
    );
}

/// In a 64 MiB `/dev/shm`: one object of every kind is made (topic, queue, serde queue, value,
/// shared state, array, array topic whose pool grows), the rest is filled with arrays, then
/// values, until creation is refused (less than the smallest segment is left). Then every kind
/// of creation, and the array pool's growth, must be refused with `OutOfSpace` (never a
/// signal), naming the bytes asked for and leaving no file. The objects made before keep
/// working while it is full: publish/receive and a late subscriber on the topic, get (items put
/// while there was room) and a new participant on the queues, the value, the shared state,
/// reading and writing the array and attaching it again, frames of the pool's size. Once the
/// filler is gone, creation and pool growth work again, and the private `/dev/shm` is left
/// empty.
#[test]
fn a_full_dev_shm_refuses_creation_and_keeps_what_exists_working() {
    const TEST: &str = "a_full_dev_shm_refuses_creation_and_keeps_what_exists_working";
    let mut s = scope!("smallshm");
    let Some(env) = ShmEnv::private_or_skip(&mut s, TEST, 64 * MIB) else {
        return;
    };
    let prefix = s.name();
    let mut p = env.spawn(&mut s, "small-shm", &["small-shm", "--prefix", &prefix]);
    let (status, lines) = p.wait_output(BULK);
    let t = p.transcript();
    assert!(
        status.signal().is_none(),
        "the peer was killed by a signal ({status}): a full /dev/shm must give errors\n{t}"
    );
    assert!(status.success(), "the peer failed ({status})\n{t}");
    let line = |tag: &str| {
        lines
            .iter()
            .find(|l| l.tag == tag)
            .unwrap_or_else(|| panic!("no {tag:?} line\n{t}"))
    };
    assert_eq!(
        line("start").num("total"),
        64 * MIB,
        "the private /dev/shm's size"
    );

    check_round(&lines, 1, "roomy", &t);

    let fills: Vec<&Line> = lines.iter().filter(|l| l.tag == "fill").collect();
    assert_eq!(fills.len(), 5, "{t}");
    for f in &fills {
        assert_eq!(f.get("code"), "out-of-space", "{}", f.raw);
        assert!(f.num("requested") >= SMALLEST, "{}", f.raw);
    }
    assert!(fills[0].num("made") > 0, "large arrays fit at first: {t}");
    let full = line("full");
    assert!(
        full.num("free") < SMALLEST,
        "filled to less than the smallest segment: {}",
        full.raw
    );

    let refused: HashMap<&str, &Line> = lines
        .iter()
        .filter(|l| l.tag == "refused")
        .map(|l| (l.get("kind"), l))
        .collect();
    for kind in KINDS {
        let r = refused
            .get(kind)
            .unwrap_or_else(|| panic!("no refusal line for {kind}\n{t}"));
        assert_eq!(
            r.get("code"),
            "out-of-space",
            "{kind} in a full /dev/shm: {}",
            r.raw
        );
        assert!(r.num("requested") >= SMALLEST, "{}", r.raw);
        assert_eq!(r.get("left"), "false", "a file was left: {}", r.raw);
    }
    assert_eq!(refused.len(), KINDS.len(), "{t}");
    assert_eq!(
        refused["pool-growth"].num("pool_segments"),
        1,
        "the refused growth left no pool segment: {}",
        refused["pool-growth"].raw
    );
    assert!(
        line("refusals-done").num("free") < SMALLEST,
        "the refusals reserved nothing"
    );

    check_round(&lines, 2, "full", &t);

    let again = line("room-again");
    assert_eq!(again.get("topic_created"), "true", "{}", again.raw);
    assert_eq!(again.get("pool_grew"), "true", "{}", again.raw);
    let done = line("done");
    assert_eq!(done.get("left"), "none", "{}", done.raw);
    assert_eq!(done.num("free"), 64 * MIB, "{}", done.raw);
    assert_eq!(env.entries(), Vec::<String>::new(), "files left behind");
    assert_eq!(env.used_bytes(), 0, "space left in use");
}

/// A tmpfs that runs out of inodes before bytes (`nr_inodes`) refuses creation with
/// `OutOfSpace` too, naming the bytes asked for (not an OS error, not 0 bytes), leaves no
/// file, and the values made before keep their contents.
#[test]
fn no_inode_left_is_out_of_space() {
    const TEST: &str = "no_inode_left_is_out_of_space";
    let mut s = scope!("fewinodes");
    let env = match ShmEnv::private_mounted(&mut s, "size=64m,nr_inodes=32") {
        Ok(env) => env,
        Err(why) => {
            skip_or_fail(TEST, &format!("needs a private /dev/shm: {why}"));
            return;
        }
    };
    let prefix = s.name();
    let mut p = env.spawn(&mut s, "few-inodes", &["few-inodes", "--prefix", &prefix]);
    let (status, lines) = p.wait_output(STEP);
    let t = p.transcript();
    assert!(
        status.signal().is_none() && status.success(),
        "{status}\n{t}"
    );
    let inodes = lines
        .iter()
        .find(|l| l.tag == "inodes")
        .unwrap_or_else(|| panic!("no inodes line\n{t}"));
    let made = inodes.num("made");
    assert!(
        (1..32).contains(&made),
        "32 inodes hold fewer than 32 values: {}",
        inodes.raw
    );
    assert_eq!(inodes.get("code"), "out-of-space", "{}", inodes.raw);
    assert!(inodes.num("requested") >= SMALLEST, "{}", inodes.raw);
    assert_eq!(inodes.get("left"), "false", "{}", inodes.raw);
    assert!(
        inodes.num("free") > 60 * MIB,
        "bytes were not what ran out: {}",
        inodes.raw
    );
    let w = lines
        .iter()
        .find(|l| l.tag == "works")
        .unwrap_or_else(|| panic!("no works line\n{t}"));
    assert_eq!(w.get("intact"), "true", "{}", w.raw);
    assert_eq!(env.entries(), Vec::<String>::new(), "files left behind");
}

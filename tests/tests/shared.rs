//! Shared serde state across processes: updates from several processes are all applied, readers
//! always see a complete version, and a writer killed mid-update leaves the last complete
//! version readable and the lock usable.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shmbus::Shared;
use shmbus_tests::{scope, Peer, Rng, Tally, BULK, STEP};

fn check(t: &Tally) {
    assert!(t.is_complete(), "{t:?}");
}

/// Three writer processes; this process reads snapshots all along: every update is applied,
/// every snapshot is complete, versions only go forward, and `wait_changed` wakes up.
#[test]
fn updates_from_several_processes_all_apply_and_reads_are_consistent() {
    let mut s = scope!("shared");
    let name = s.name();
    let st = Shared::open_or_create(&name, 4096, &Tally::default()).unwrap();
    let v0 = st.version();
    let mut writers: Vec<Peer> = (0..3)
        .map(|i| {
            s.spawn(
                &format!("writer {i}"),
                &["shared-update", "--name", &name, "--count", "300"],
            )
        })
        .collect();
    assert!(st.wait_changed(v0, STEP).unwrap() > v0);
    let mut last = 0;
    let deadline = Instant::now() + BULK;
    loop {
        let (t, v) = st.load().unwrap();
        check(&t);
        assert!(v >= last && t.n == v, "version {v} holds n = {}", t.n);
        last = v;
        if v == 900 || Instant::now() > deadline {
            break;
        }
    }
    for w in &mut writers {
        w.finish("done", BULK);
    }
    let (t, v) = st.load().unwrap();
    assert_eq!((t.n, v), (900, 900));
}

/// A writer SIGKILLed at random moments: the state stays complete and readable, and the next
/// update (here) takes the lock at once.
#[test]
fn a_writer_killed_mid_update_leaves_the_last_complete_version() {
    let mut s = scope!("shared-kill");
    let name = s.name();
    let st = Shared::open_or_create(&name, 4096, &Tally::default()).unwrap();
    let mut rng = Rng::from_env_or_clock();
    for round in 0..6 {
        let mut w = s.spawn(
            &format!("writer {round}"),
            &["shared-update", "--name", &name],
        );
        w.expect("ready", STEP);
        std::thread::sleep(Duration::from_millis(rng.range(1, 40)));
        w.kill();
        w.wait(STEP);
        let (t, v) = st.load().unwrap();
        check(&t);
        assert_eq!(t.n, v);
        let start = Instant::now();
        let v2 = st.update(Tally::bump).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(v2, v + 1);
    }
}

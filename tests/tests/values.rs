//! Shared values and barriers across processes: atomic counters are exact, a writer of a locked
//! value killed mid-update leaves the last complete value, and a barrier party that dies is
//! reported to the others instead of hanging them.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shmbus::{Barrier, BarrierError, Value};
use shmbus_tests::{scope, Peer, Rng, BULK, STEP};

/// Three processes and this one add to one counter: not one increment is lost.
#[test]
fn an_atomic_counter_is_exact_across_processes() {
    let mut s = scope!("value-count");
    let name = s.name();
    let v = Value::open_or_create(&name, 0u64).unwrap();
    assert!(v.is_atomic());
    let mut peers: Vec<Peer> = (0..3)
        .map(|i| {
            s.spawn(
                &format!("adder {i}"),
                &["value-add", "--name", &name, "--count", "20000"],
            )
        })
        .collect();
    for _ in 0..10_000 {
        v.fetch_add(1);
    }
    for p in &mut peers {
        p.finish("done", BULK);
    }
    assert_eq!(v.load().unwrap(), 70_000);
    drop(v);
    s.assert_gone(&name);
}

/// A writer of a 256-byte value (under the robust lock) SIGKILLed at random moments: every
/// load sees a complete value (all 32 words equal), never a torn one, and the next update
/// goes through at once.
#[test]
fn a_writer_killed_mid_update_leaves_the_last_complete_value() {
    let mut s = scope!("value-torn");
    let name = s.name();
    let v = Value::open_or_create(&name, [0u64; 32]).unwrap();
    assert!(!v.is_atomic());
    let mut rng = Rng::from_env_or_clock();
    let mut last = 0;
    for round in 0..6 {
        let mut w = s.spawn(
            &format!("writer {round}"),
            &["value-scribble", "--name", &name],
        );
        w.expect("ready", STEP);
        let until = Instant::now() + Duration::from_millis(rng.range(5, 60));
        while Instant::now() < until {
            let x = v.load().unwrap();
            assert!(x.iter().all(|&e| e == x[0]), "torn value {x:?}");
            assert!(x[0] >= last);
            last = x[0];
        }
        w.kill();
        w.wait(STEP);
        let t = Instant::now();
        let x = v.update(|x| [x[0] + 1; 32]).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the lock was repaired at once"
        );
        assert!(x.iter().all(|&e| e == x[0]));
        last = x[0];
    }
    assert!(last > 0);
}

/// Four processes pass five generations of a barrier together: one leader per generation.
#[test]
fn a_barrier_releases_every_generation_together() {
    let mut s = scope!("barrier");
    let name = s.name();
    let mut peers: Vec<Peer> = (0..3)
        .map(|i| {
            s.spawn(
                &format!("party {i}"),
                &[
                    "barrier-wait",
                    "--name",
                    &name,
                    "--parties",
                    "4",
                    "--rounds",
                    "5",
                ],
            )
        })
        .collect();
    for p in &mut peers {
        p.expect("ready", STEP);
    }
    let b = Barrier::open(&name, 4).unwrap();
    let mut leaders = vec![0; 5];
    for (r, l) in leaders.iter_mut().enumerate() {
        *l += u32::from(b.wait_timeout(STEP).unwrap());
        assert_eq!(b.generation(), r as u32 + 1);
    }
    for p in &mut peers {
        let (status, lines) = p.wait_output(STEP);
        assert!(status.success());
        for l in lines.iter().filter(|l| l.tag == "passed") {
            leaders[l.num("round") as usize] += u32::from(l.get("leader") == "true");
        }
    }
    assert_eq!(leaders, vec![1; 5], "one leader per generation");
    assert!(matches!(
        Barrier::open(&name, 3),
        Err(shmbus::OpenError::Segment(_))
    ));
}

/// A party that joined and is SIGKILLed before it arrives breaks the generation: the waiting
/// parties (here and in another process) are told within a fraction of a second, and with a
/// replacement party the next generation completes.
#[test]
fn a_dead_party_is_reported_instead_of_hanging_the_others() {
    let mut s = scope!("barrier-dead");
    let name = s.name();
    let b = Barrier::open(&name, 3).unwrap();
    let mut sleeper = s.spawn(
        "party that never arrives",
        &[
            "barrier-wait",
            "--name",
            &name,
            "--parties",
            "3",
            "--rounds",
            "0",
        ],
    );
    sleeper.expect("ready", STEP);
    let mut waiter = s.spawn(
        "waiting party",
        &[
            "barrier-wait",
            "--name",
            &name,
            "--parties",
            "3",
            "--rounds",
            "2",
        ],
    );
    waiter.expect("ready", STEP);
    assert!(
        shmbus_tests::wait_until(STEP, || b.arrived() == 1),
        "the waiting party arrives"
    );
    sleeper.kill();
    let t = Instant::now();
    assert!(matches!(b.wait_timeout(STEP), Err(BarrierError::PartyDied)));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(waiter.expect("broken", STEP).num("round"), 0);
    // A replacement joins the dead party's row; the next generation completes.
    let mut replacement = s.spawn(
        "replacement",
        &[
            "barrier-wait",
            "--name",
            &name,
            "--parties",
            "3",
            "--rounds",
            "1",
        ],
    );
    replacement.expect("ready", STEP);
    b.wait_timeout(STEP).expect("the next generation completes");
    replacement.finish("done", STEP);
    assert_eq!(waiter.finish("done", STEP).tag, "done");
}

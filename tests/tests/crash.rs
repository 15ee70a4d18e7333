//! Processes SIGKILLed at awkward moments: holding a mutex, publishing, holding samples.

use std::time::{Duration, Instant};

use shmbus::{LockError, Mutex, Overflow, RecvError, Topic};
use shmbus_core::layout::TypeInfo;
use shmbus_core::name::Name;
use shmbus_core::topic::{RawTopic, TopicOptions};
use shmbus_tests::{scope, Msg, Rng, STEP};

/// What `hold-lock` writes while it holds the mutex.
const DIRTY: u64 = 0xD1D;

/// Scenario 8: a robust mutex whose holder is SIGKILLed. A waiter blocked in another process is
/// woken with `OwnerDied`, sees the dead holder's write, repairs and marks the mutex consistent;
/// later lockers (this process, another process) get `Clean`. Then the same with this process
/// as the next locker.
#[test]
fn robust_mutex_survives_its_holder_being_killed() {
    let mut s = scope!("mutex");
    let name = s.name();
    let mut holder = s.spawn("holder", &["hold-lock", "--name", &name]);
    let locked = holder.expect("locked", STEP);
    assert_eq!(
        (
            locked.get("created"),
            locked.get("acquired"),
            locked.num("value")
        ),
        ("true", "clean", 0)
    );
    // Keep the segment in use across the holder's death.
    let m = Mutex::<u64>::open(&name).expect("open the holder's mutex");
    match m.lock_timeout(Duration::from_millis(50)) {
        Err(LockError::Timeout) => {}
        other => panic!("the mutex is held: expected a timeout, got {other:?}"),
    }

    // A process blocked on the mutex when its holder dies.
    let mut waiter = s.spawn(
        "waiter",
        &["lock", "--name", &name, "--timeout-ms", "4000", "--repair"],
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(waiter.pending().is_empty(), "the waiter got a held mutex");
    holder.kill();
    let got = waiter.expect("acquired", STEP);
    assert_eq!(got.get("state"), "owner-died", "{}", got.raw);
    assert_eq!(
        got.num("value"),
        DIRTY,
        "the dead holder's write is visible"
    );
    waiter.expect("repaired", STEP);
    waiter.finish("unlocked", STEP);

    // Later lockers get Clean.
    {
        let g = m.lock_timeout(STEP).expect("lock after the repair");
        assert!(!g.owner_died(), "clean");
        assert_eq!(*g, 0, "the repair reset the value");
    }
    let mut later = s.spawn("later locker", &["lock", "--name", &name]);
    assert_eq!(later.expect("acquired", STEP).get("state"), "clean");
    later.finish("unlocked", STEP);

    // This process as the next locker after a death, repairing in place.
    let mut holder2 = s.spawn("holder 2", &["hold-lock", "--name", &name]);
    assert_eq!(holder2.expect("locked", STEP).get("created"), "false");
    holder2.kill();
    {
        let mut g = m.lock_timeout(STEP).expect("lock after the second death");
        assert_eq!((g.owner_died(), *g), (true, DIRTY));
        *g = 0;
        g.mark_consistent();
    }
    assert!(
        !m.lock_timeout(STEP).expect("clean again").owner_died(),
        "clean again"
    );

    drop(m);
    s.assert_gone(&name);
}

/// Scenario 8, the unrepaired case: when the locker after a dead holder unlocks without marking
/// the mutex consistent, the mutex is not recoverable, and every later `lock` in every process
/// must say so at once (`NotRecoverable`), never time out or hang.
#[test]
fn unrepaired_robust_mutex_is_not_recoverable_for_every_later_locker() {
    let mut s = scope!("mutexnr");
    let name = s.name();
    let mut holder = s.spawn("holder", &["hold-lock", "--name", &name]);
    holder.expect("locked", STEP);
    let m = Mutex::<u64>::open(&name).expect("open the holder's mutex");
    holder.kill();
    let mut careless = s.spawn("careless locker", &["lock", "--name", &name]);
    assert_eq!(careless.expect("acquired", STEP).get("state"), "owner-died");
    careless.finish("unlocked", STEP);

    for i in 0..3 {
        let mut late = s.spawn(
            &format!("late locker {i}"),
            &["lock", "--name", &name, "--timeout-ms", "500"],
        );
        let err = late.expect("error", STEP);
        assert_eq!(
            err.get("code"),
            "not-recoverable",
            "late locker {i}: {}",
            err.raw
        );
        late.wait(STEP);
    }
    for i in 0..2 {
        match m.lock_timeout(Duration::from_millis(500)) {
            Err(LockError::NotRecoverable) => {}
            other => panic!("lock {i} in this process: expected NotRecoverable, got {other:?}"),
        }
    }
    drop(m);
    s.assert_gone(&name);
}

/// Scenario 9: a publisher SIGKILLed at a random point while publishing as fast as it can, 20
/// times over, alternating back-pressure and overwrite. Two subscriber processes blocked in
/// `recv()` (no timeout) return `Disconnected`, every message they received is intact and in
/// order, the last one out removes the topic, and the next round re-creates it under the same
/// name. Replay a failure with the printed `SHMBUS_TEST_SEED`.
#[test]
fn publisher_killed_mid_stream_disconnects_subscribers() {
    let mut s = scope!("pubkill");
    let name = s.name();
    let mut rng = Rng::from_env_or_clock();
    let mut total = 0;
    for round in 0..20 {
        let overflow = if round % 2 == 0 {
            "back-pressure"
        } else {
            "overwrite"
        };
        let topic = [
            "--topic",
            name.as_str(),
            "--overflow",
            overflow,
            "--capacity",
            "8",
        ];
        let mut subs: Vec<_> = (0..2)
            .map(|i| {
                s.spawn(
                    &format!("round {round} subscriber {i}"),
                    &[
                        &["subscribe", "--timeout-ms", "0", "--announce-first"][..],
                        &topic,
                    ]
                    .concat(),
                )
            })
            .collect();
        for sub in &mut subs {
            sub.expect("ready", STEP);
        }
        let interval = rng.range(0, 3) * 20;
        let mut publ = s.spawn(
            &format!("round {round} publisher"),
            &[
                &[
                    "publish",
                    "--forever",
                    "--interval-us",
                    &interval.to_string(),
                ][..],
                &topic,
            ]
            .concat(),
        );
        publ.expect("ready", STEP);
        // Every subscriber has seen the publisher: `Disconnected` is about publishers it saw
        // (for one it did not see, see the ignored test below).
        for sub in &mut subs {
            sub.expect("first", STEP);
        }
        let delay = rng.range(0, 30);
        std::thread::sleep(Duration::from_millis(delay));
        publ.kill();
        for sub in &mut subs {
            let summary = sub.finish("summary", STEP);
            let ctx = format!(
                "round {round} ({overflow}, killed after {delay} ms): {}",
                summary.raw
            );
            assert_eq!(summary.get("end"), "disconnected", "{ctx}");
            for k in ["bad_checksum", "bad_order", "gaps", "bad_index"] {
                assert_eq!(summary.num(k), 0, "{k}: {ctx}");
            }
            // Joined before message 0: every message up to the last one received was either
            // received or reported as lag.
            let received = summary.num("received");
            assert_eq!(summary.get("base"), "0", "{ctx}");
            assert_eq!(
                received + summary.num("lagged"),
                summary.num("next"),
                "{ctx}"
            );
            assert_eq!(summary.num("last_index") + 1, summary.num("next"), "{ctx}");
            assert!(
                summary.num("lost") <= 1,
                "at most the message being published: {ctx}"
            );
            if overflow == "back-pressure" {
                assert_eq!(
                    summary.num("lagged"),
                    0,
                    "back-pressure never overwrites: {ctx}"
                );
            }
            total += received;
        }
        s.assert_gone(&name);
    }
    assert!(
        total > 0,
        "no round delivered anything: the test tests nothing"
    );
}

/// Scenario 9 with two publishers, so that publishing goes through the topic's robust publish
/// mutex: one publisher process is SIGKILLed at a random point and replaced, 10 times, while
/// the other keeps publishing. The subscriber process never sees a torn, repeated or reordered
/// message; the only sequence numbers it misses are messages lost with a publisher killed while
/// publishing them (the topic's `lost` counter); nobody blocks for good.
#[test]
fn one_of_two_publishers_killed_repeatedly() {
    let mut s = scope!("twopub");
    let name = s.name();
    let mut rng = Rng::from_env_or_clock();
    let topic = [
        "--topic",
        name.as_str(),
        "--overflow",
        "back-pressure",
        "--capacity",
        "8",
        "--max-publishers",
        "2",
    ];
    let mut sub = s.spawn(
        "subscriber",
        &[
            &["subscribe", "--timeout-ms", "3000", "--announce-first"][..],
            &topic,
        ]
        .concat(),
    );
    sub.expect("ready", STEP);
    let mut steady = s.spawn(
        "steady publisher",
        &[
            &["publish", "--forever", "--interval-us", "100"][..],
            &topic,
        ]
        .concat(),
    );
    steady.expect("ready", STEP);
    sub.expect("first", STEP);
    for round in 0..10 {
        let mut victim = s.spawn(
            &format!("victim {round}"),
            &[&["publish", "--forever"][..], &topic].concat(),
        );
        victim.expect("ready", STEP);
        std::thread::sleep(Duration::from_millis(rng.range(1, 20)));
        victim.kill();
        assert!(
            steady.is_running(),
            "the steady publisher died in round {round}"
        );
    }
    steady.kill();
    let summary = sub.finish("summary", STEP);
    let ctx = &summary.raw;
    eprintln!("{ctx}");
    for k in ["bad_checksum", "bad_order", "bad_index", "lagged"] {
        assert_eq!(summary.num(k), 0, "{k}: {ctx}");
    }
    assert_eq!(summary.get("end"), "disconnected", "{ctx}");
    assert_eq!(summary.get("base"), "0", "{ctx}");
    assert_eq!(
        summary.num("gaps"),
        summary.num("lost"),
        "every skipped sequence number is a message lost with a killed publisher: {ctx}"
    );
    assert!(
        summary.num("producers") >= 2,
        "the victims published too: {ctx}"
    );
}

/// Scenario 9, the other half: a subscriber blocked in `recv()` whose publisher never published
/// anything it read, and was SIGKILLed, also returns `Disconnected` (here the other subscriber
/// process reclaims the dead publisher's row first). Nobody may hang.
#[test]
fn publisher_killed_before_publishing_disconnects_every_subscriber() {
    let mut s = scope!("pubkill0");
    for round in 0..10 {
        let name = s.name();
        let topic = [
            "--topic",
            name.as_str(),
            "--overflow",
            "back-pressure",
            "--capacity",
            "8",
        ];
        let mut subs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn(
                    &format!("round {round} subscriber {i}"),
                    &[&["subscribe", "--timeout-ms", "0"][..], &topic].concat(),
                )
            })
            .collect();
        for sub in &mut subs {
            sub.expect("ready", STEP);
        }
        // A publisher that joins and publishes nothing (then is killed).
        let mut publ = s.spawn(
            "silent publisher",
            &["publish", "--count", "0", "--hold", "--topic", &name],
        );
        publ.expect("done", STEP);
        publ.kill();
        for sub in &mut subs {
            let summary = sub.finish("summary", STEP);
            assert_eq!(
                summary.get("end"),
                "disconnected",
                "round {round}: {}",
                summary.raw
            );
            assert_eq!(summary.num("received"), 0);
        }
        s.assert_gone(&name);
    }
}

/// Scenario 9: a subscriber (this process) outlives three publishers that are SIGKILLed one
/// after another: it gets `Disconnected` after each, and receives again from the next one,
/// everything intact and in topic order.
#[test]
fn subscriber_receives_again_from_a_new_publisher() {
    let mut s = scope!("republish");
    let name = s.name();
    let sub = Topic::builder(&name)
        .overflow(Overflow::BackPressure)
        .capacity(8)
        .subscriber::<Msg>()
        .expect("subscriber");
    let mut last_seq = None;
    for generation in 0..3 {
        let mut publ = s.spawn(
            &format!("publisher {generation}"),
            &["publish", "--forever", "--topic", &name],
        );
        let producer = publ.expect("ready", STEP).num("producer");
        let mut got = 0;
        let deadline = Instant::now() + STEP;
        let mut killed = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "generation {generation}: no Disconnected within {STEP:?}"
            );
            match sub.recv_timeout(Duration::from_millis(500)) {
                Ok(m) => {
                    assert!(m.is_intact(), "{m:?}");
                    assert_eq!(m.producer, producer, "only the current publisher publishes");
                    if let Some(prev) = last_seq {
                        assert!(
                            m.seq() > prev,
                            "sequence numbers go on across publishers: {} after {prev}",
                            m.seq()
                        );
                    }
                    last_seq = Some(m.seq());
                    got += 1;
                    if got == 50 {
                        publ.kill();
                        killed = true;
                    }
                }
                Err(RecvError::Disconnected) => {
                    assert!(killed, "Disconnected while the publisher lives");
                    break;
                }
                Err(RecvError::Timeout) => assert!(
                    killed,
                    "generation {generation}: the publisher stopped publishing"
                ),
                Err(e) => panic!("generation {generation}: {e:?}"),
            }
        }
        assert!(got >= 50);
    }
    drop(sub);
    s.assert_gone(&name);
}

/// Scenario 10: subscriber processes SIGKILLed while holding samples. Their rows and slots come
/// back: the publisher publishes many times the pool size with no `PoolExhausted`, a reclaim
/// finds the dead rows, and a new subscriber reads intact messages.
#[test]
fn killed_holders_give_their_slots_back() {
    const HOLDERS: usize = 3;
    let mut s = scope!("holders");
    let name = s.name();
    // Pool: capacity 4 + 1 loan + 3 subscribers x 2 held + 1 = 12 slots.
    let mut publ = Topic::builder(&name)
        .overflow(Overflow::Overwrite)
        .capacity(4)
        .max_subscribers(HOLDERS as u32)
        .max_held(2)
        .publisher::<Msg>()
        .expect("publisher");
    let mut index = 0;
    let mut send = |n: u64| {
        for _ in 0..n {
            publ.send(Msg::new(7, index))
                .unwrap_or_else(|e| panic!("message {index}: {e:?}"));
            index += 1;
        }
    };
    for round in 0..5 {
        let mut holders: Vec<_> = (0..HOLDERS)
            .map(|i| {
                s.spawn(
                    &format!("round {round} holder {i}"),
                    &["hold", "--topic", &name, "--hold", "2"],
                )
            })
            .collect();
        for h in &mut holders {
            h.expect("ready", STEP);
        }
        send(2);
        for h in &mut holders {
            h.expect("holding", STEP);
        }
        for h in &mut holders {
            h.kill();
        }
        send(100);
    }

    // The last holders are dead and nobody has reclaimed them yet: a reclaim finds all three.
    let raw = RawTopic::open(
        &Name::new(&name).unwrap(),
        &TypeInfo::pod::<Msg>(),
        &TopicOptions::default(),
    )
    .expect("raw open");
    let active = |raw: &RawTopic| {
        (0..HOLDERS as u32)
            .filter(|&k| raw.ring().subscriber_info(k).0)
            .count()
    };
    assert_eq!(
        active(&raw),
        HOLDERS,
        "dead holders' rows stay until reclaimed"
    );
    assert_eq!(
        raw.reclaim_dead(),
        HOLDERS as u32,
        "every dead holder is reclaimed"
    );
    assert_eq!(active(&raw), 0);

    send(500);
    let sub = Topic::builder(&name)
        .history(4)
        .subscriber::<Msg>()
        .expect("subscriber");
    for _ in 0..4 {
        let m = sub.try_recv().expect("history");
        assert!(m.is_intact(), "{m:?}");
    }
    drop((sub, raw, publ));
    s.assert_gone(&name);
}

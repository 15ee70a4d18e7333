//! Slow subscribers: lag under overwrite, back-pressure with timeouts, and a stalled subscriber
//! that is killed while the publisher waits for it.

use std::time::{Duration, Instant};

use shmbus::{Overflow, PublishFailure, SendFailure, Topic};
use shmbus_tests::{check_summary, scope, Msg, BULK, STEP};

/// Scenario 4: a slow subscriber process on a small overwrite topic is told `Lagged(n)`, resumes,
/// and what it received plus what it was told it missed is exactly what was published after it
/// joined; the last messages, left in the ring when the publisher leaves, are all received.
#[test]
fn slow_subscriber_lags_and_accounts_for_every_message() {
    const N: u64 = 1_000;
    let mut s = scope!("lag");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "overwrite",
        "--capacity",
        "4",
    ];
    // The subscriber creates the topic and joins before anything is published.
    let mut sub = s.spawn(
        "slow subscriber",
        &[&["subscribe", "--sleep-us", "2000"][..], &topic].concat(),
    );
    sub.expect("ready", STEP);
    let mut publ = s.spawn(
        "publisher",
        &[
            &["publish", "--count", &N.to_string(), "--interval-us", "50"][..],
            &topic,
        ]
        .concat(),
    );
    assert_eq!(publ.finish("done", BULK).num("sent"), N);
    let summary = sub.finish("summary", BULK);
    eprintln!("{}", summary.raw);
    let (received, lagged) = check_summary(&summary, N);
    assert!(
        lagged > 0 && summary.num("lag_events") > 0,
        "a subscriber this slow must lag: {}",
        summary.raw
    );
    assert!(
        summary.num("after_lag") > 0,
        "it resumes after lagging: {}",
        summary.raw
    );
    assert!(
        received >= 4,
        "the last capacity messages stay readable: {}",
        summary.raw
    );
    assert_eq!(
        summary.num("last_index"),
        N - 1,
        "the last message is received: {}",
        summary.raw
    );
    s.assert_gone(&name);
}

/// Scenario 5: a publisher held back by a stalled subscriber process (which never receives)
/// times out with `SendError::Timeout`, gets its message or loan back, and leaks no slot; once
/// the stalled subscriber is killed, publishing proceeds.
#[test]
fn back_pressure_times_out_on_a_stalled_subscriber() {
    const CAP: u64 = 4;
    let mut s = scope!("bptimeout");
    let name = s.name();
    let mut stalled = s.spawn(
        "stalled subscriber",
        &[
            "hold",
            "--topic",
            &name,
            "--overflow",
            "back-pressure",
            "--capacity",
            "4",
            "--hold",
            "0",
        ],
    );
    stalled.expect("holding", STEP);

    let timeout = Duration::from_millis(100);
    let topic = Topic::builder(&name)
        .overflow(Overflow::BackPressure)
        .publish_timeout(Some(timeout));
    let mut publ = topic.publisher::<Msg>().expect("publisher");
    for i in 0..CAP {
        publ.send(Msg::new(1, i)).expect("room for a whole ring");
    }
    let started = Instant::now();
    match publ.send(Msg::new(1, CAP)) {
        Err(e) if matches!(e.reason(), SendFailure::Publish(PublishFailure::Timeout)) => {
            assert_eq!(
                e.into_inner(),
                Msg::new(1, CAP),
                "the message is handed back"
            )
        }
        other => panic!("expected SendError::Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() >= timeout,
        "it gave up before its timeout: {:?}",
        started.elapsed()
    );
    // A loan that cannot be published is handed back; dropping it returns the slot.
    for _ in 0..3 {
        let mut loan = publ
            .loan()
            .expect("a slot: the failed publishes gave theirs back");
        *loan = Msg::new(1, CAP);
        match loan.publish() {
            Err(e) if matches!(e.reason(), PublishFailure::Timeout) => {
                assert_eq!(*e.into_inner(), Msg::new(1, CAP))
            }
            other => panic!("expected SendError::Timeout, got {other:?}"),
        }
    }
    assert!(publ.stats().backpressure_waits >= 4, "{:?}", publ.stats());
    assert_eq!(publ.stats().published, CAP);

    // The stalled subscriber dies: its row is reclaimed and the publisher proceeds.
    stalled.kill();
    for i in CAP..CAP + 100 {
        publ.send(Msg::new(1, i))
            .unwrap_or_else(|e| panic!("message {i} after the stalled subscriber died: {e}"));
    }
    drop(publ);
    s.assert_gone(&name);
}

/// Scenario 5: a publisher process blocked (with no timeout at all) on a subscriber process that
/// holds two samples and never reads on is released when that subscriber is SIGKILLed.
#[test]
fn killing_the_stalled_subscriber_releases_a_blocked_publisher() {
    let mut s = scope!("bpkill");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "back-pressure",
        "--capacity",
        "4",
    ];
    let mut holder = s.spawn("holder", &[&["hold", "--hold", "2"][..], &topic].concat());
    holder.expect("ready", STEP);
    let mut publ = s.spawn(
        "publisher",
        &[
            &[
                "publish",
                "--count",
                "50",
                "--progress",
                "--publish-timeout-ms",
                "0",
            ][..],
            &topic,
        ]
        .concat(),
    );
    assert_eq!(holder.expect("holding", STEP).get("seqs"), "0,1");
    // With the holder's cursor at 2 and a ring of 4, messages 0..=5 fit; message 6 waits.
    loop {
        let sent = publ.expect("sent", STEP);
        if sent.num("index") == 5 {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let more: Vec<_> = publ
        .pending()
        .into_iter()
        .filter(|l| l.tag != "sent" || l.num("index") > 5)
        .collect();
    assert!(
        more.is_empty(),
        "the publisher should be blocked on the stalled holder: {more:?}"
    );
    assert!(publ.is_running());

    holder.kill();
    let done = publ.finish("done", STEP);
    assert_eq!(done.num("sent"), 50);
    s.assert_gone(&name);
}

/// Found by the chaos harness: on a topic with several publishers, a publisher whose publish
/// timeout runs out while another one holds the publish lock (here a publisher process held
/// back by a stalled subscriber, waiting for room under the lock) gets `Timeout`, like a wait
/// for room, not a lock failure; and it publishes once the other lets go.
#[test]
fn a_publisher_waiting_for_the_publish_lock_times_out_with_timeout() {
    let mut s = scope!("bplocktimeout");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "back-pressure",
        "--capacity",
        "4",
        "--max-publishers",
        "2",
    ];
    let mut stalled = s.spawn(
        "stalled subscriber",
        &[&["hold", "--hold", "0"][..], &topic].concat(),
    );
    stalled.expect("holding", STEP);
    // It fills the ring, then waits for room (10 s) holding the publish lock.
    let mut blocked = s.spawn(
        "blocked publisher",
        &[
            &[
                "publish",
                "--count",
                "5",
                "--progress",
                "--publish-timeout-ms",
                "10000",
            ][..],
            &topic,
        ]
        .concat(),
    );
    while blocked.expect("sent", STEP).num("index") < 3 {}
    // Let it get into its wait for room.
    std::thread::sleep(Duration::from_millis(100));
    let timeout = Duration::from_millis(200);
    let mut publ = Topic::builder(&name)
        .overflow(Overflow::BackPressure)
        .max_publishers(2)
        .publish_timeout(Some(timeout))
        .publisher::<Msg>()
        .expect("second publisher");
    let started = Instant::now();
    match publ.send(Msg::new(2, 0)) {
        Err(e) if matches!(e.reason(), SendFailure::Publish(PublishFailure::Timeout)) => {
            assert_eq!(e.into_inner(), Msg::new(2, 0), "the message is handed back");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    // The same through a loan.
    let mut loan = publ.loan().expect("a slot");
    *loan = Msg::new(2, 0);
    match loan.publish() {
        Err(e) if matches!(e.reason(), PublishFailure::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The stalled subscriber dies: the blocked publisher finishes and lets go of the lock.
    stalled.kill();
    assert_eq!(blocked.finish("done", STEP).num("sent"), 5);
    publ.send(Msg::new(2, 0)).expect("the lock is free again");
    drop(publ);
    s.assert_gone(&name);
}

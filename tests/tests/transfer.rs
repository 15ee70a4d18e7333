//! Messages between processes: intact, in order, to every subscriber, from the right point on.

use std::time::Duration;

use shmbus::{Overflow, RecvError, SendFailure, Topic};
use shmbus_tests::{check_summary, scope, Msg, Rec, BULK, STEP};

/// Scenario 1: a publisher and a subscriber in two processes, 10 000 plain-old-data messages on
/// a back-pressure topic: every message arrives intact and in order, none is lost, and the last
/// process out removes the topic.
#[test]
fn pod_messages_cross_processes_intact_and_in_order() {
    const N: u64 = 10_000;
    let mut s = scope!("pod");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "back-pressure",
        "--capacity",
        "32",
    ];
    let mut sub = s.spawn("subscriber", &[&["subscribe"][..], &topic].concat());
    sub.expect("ready", STEP);
    let mut publ = s.spawn(
        "publisher",
        &[&["publish", "--count", &N.to_string()][..], &topic].concat(),
    );
    let done = publ.finish("done", BULK);
    assert_eq!(done.num("sent"), N);
    assert_eq!(done.num("last_seq"), N - 1);
    let summary = sub.finish("summary", BULK);
    let (received, lagged) = check_summary(&summary, N);
    assert_eq!(
        (received, lagged),
        (N, 0),
        "back-pressure loses nothing: {}",
        summary.raw
    );
    assert_eq!(summary.num("first_index"), 0);
    assert_eq!(summary.num("last_index"), N - 1);
    s.assert_gone(&name);
}

/// Scenario 2: serde messages (a string and a vector of varying lengths) across processes.
#[test]
fn serde_messages_cross_processes_intact() {
    const N: u64 = 2_000;
    let mut s = scope!("serde");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--type",
        "rec",
        "--overflow",
        "back-pressure",
        "--capacity",
        "16",
    ];
    let mut sub = s.spawn("subscriber", &[&["subscribe"][..], &topic].concat());
    sub.expect("ready", STEP);
    let mut publ = s.spawn(
        "publisher",
        &[&["publish", "--count", &N.to_string()][..], &topic].concat(),
    );
    assert_eq!(publ.finish("done", BULK).num("sent"), N);
    let summary = sub.finish("summary", BULK);
    assert_eq!(check_summary(&summary, N), (N, 0), "{}", summary.raw);
    s.assert_gone(&name);
}

/// Scenario 2: a serde message too large for a slot is refused with both sizes, handed back, and
/// leaks nothing: the publisher goes on publishing (far more than the pool holds) afterwards.
#[test]
fn oversize_serde_message_is_too_large_with_both_sizes() {
    let mut s = scope!("oversize");
    let name = s.name();
    let topic = Topic::builder(&name).slot_size(256);
    let sub = topic.serde_subscriber::<Rec>().expect("subscriber");
    let mut publ = topic.serde_publisher::<Rec>().expect("publisher");

    let big = Rec {
        index: 1,
        producer: 2,
        label: "x".repeat(300),
        values: vec![7; 10],
    };
    let encoded = postcard::to_allocvec(&big).expect("encodes").len();
    for _ in 0..100 {
        match publ.send(big.clone()) {
            Err(e) if matches!(e.reason(), SendFailure::TooLarge { .. }) => {
                let text = e.to_string();
                let (value, SendFailure::TooLarge { size, capacity }) = e.into_parts() else {
                    unreachable!()
                };
                assert_eq!(value, big, "the message is handed back");
                assert_eq!(size, encoded, "size is the encoded size");
                assert_eq!(
                    capacity,
                    256 - 4,
                    "a 256-byte slot holds 252 bytes after the length prefix"
                );
                assert!(
                    text.contains(&size.to_string()) && text.contains(&capacity.to_string()),
                    "{text}"
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    // Nothing leaked: messages that fit still go through, many times the pool size.
    for i in 0..200 {
        publ.send(Rec::new(2, i)).expect("a fitting message");
        let got = sub.try_recv().expect("the message just sent");
        assert!(got.is_intact() && got.index == i, "{got:?}");
    }
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Empty);
    drop((sub, publ));
    s.assert_gone(&name);
}

/// Scenario 3: fan-out to three subscriber processes on a back-pressure topic: each one gets
/// every message.
#[test]
fn fan_out_to_three_subscriber_processes() {
    const N: u64 = 3_000;
    let mut s = scope!("fanout");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "back-pressure",
        "--capacity",
        "16",
    ];
    let mut subs: Vec<_> = (0..3)
        .map(|i| {
            s.spawn(
                &format!("subscriber {i}"),
                &[&["subscribe"][..], &topic].concat(),
            )
        })
        .collect();
    for sub in &mut subs {
        sub.expect("ready", STEP);
    }
    let mut publ = s.spawn(
        "publisher",
        &[&["publish", "--count", &N.to_string()][..], &topic].concat(),
    );
    assert_eq!(publ.finish("done", BULK).num("sent"), N);
    for sub in &mut subs {
        let summary = sub.finish("summary", BULK);
        assert_eq!(check_summary(&summary, N), (N, 0), "{}", summary.raw);
    }
    s.assert_gone(&name);
}

/// Scenario 6: late joiners. With history 0 the first message received is the first one
/// published after joining; with history k the last k come first; in another process too.
#[test]
fn late_join_gets_history_k_or_only_new_messages() {
    let mut s = scope!("latejoin");
    let name = s.name();
    let mut publ = s.spawn(
        "publisher",
        &[
            "pub-repl",
            "--topic",
            &name,
            "--capacity",
            "16",
            "--overflow",
            "overwrite",
        ],
    );
    publ.expect("ready", STEP);
    publ.send("send 10");
    let sent = publ.expect("sent", STEP);
    assert_eq!((sent.num("total"), sent.num("last_seq")), (10, 9));

    let topic = Topic::builder(&name);
    let fresh = topic.subscriber::<Msg>().expect("history 0");
    assert_eq!(
        fresh.try_recv().unwrap_err(),
        RecvError::Empty,
        "history 0 sees nothing published before it joined"
    );
    let last3 = topic
        .clone()
        .history(3)
        .subscriber::<Msg>()
        .expect("history 3");
    let all = topic
        .clone()
        .history(100)
        .subscriber::<Msg>()
        .expect("history 100 (more than exists)");

    // Another process joining with history 3 gets 7, 8, 9.
    let mut child = s.spawn(
        "history subscriber",
        &[
            "subscribe",
            "--topic",
            &name,
            "--history",
            "3",
            "--count",
            "3",
            "--timeout-ms",
            "3000",
        ],
    );
    let summary = child.finish("summary", STEP);
    assert_eq!(summary.get("end"), "count", "{}", summary.raw);
    assert_eq!(
        (
            summary.num("first_seq"),
            summary.num("last_seq"),
            summary.num("received")
        ),
        (7, 9, 3),
        "{}",
        summary.raw
    );
    assert_eq!(
        summary.num("bad_checksum") + summary.num("bad_order") + summary.num("lagged"),
        0,
        "{}",
        summary.raw
    );

    publ.send("send 1");
    assert_eq!(publ.expect("sent", STEP).num("last_seq"), 10);

    let recv_seqs = |sub: &shmbus::Subscriber<Msg>| -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            match sub.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => {
                    assert!(m.is_intact(), "{m:?}");
                    assert_eq!(
                        m.index,
                        m.seq(),
                        "one publisher from the start: index = seq"
                    );
                    seqs.push(m.seq());
                }
                Err(RecvError::Timeout) => return seqs,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    };
    assert_eq!(
        recv_seqs(&fresh),
        vec![10],
        "history 0: the first message is the one published after joining"
    );
    assert_eq!(recv_seqs(&last3), vec![7, 8, 9, 10]);
    assert_eq!(recv_seqs(&all), (0..=10).collect::<Vec<_>>());

    publ.send("quit");
    publ.finish("bye", STEP);
    drop((fresh, last3, all));
    s.assert_gone(&name);

    // Back-pressure topics honour history too (best effort; nothing is overwritten here).
    let name = s.name();
    let bp = Topic::builder(&name)
        .overflow(Overflow::BackPressure)
        .capacity(8);
    let mut p = bp.publisher::<Msg>().expect("publisher");
    for i in 0..5 {
        p.send(Msg::new(9, i))
            .expect("no subscriber yet: nothing holds the publisher back");
    }
    let sub = bp
        .clone()
        .history(2)
        .subscriber::<Msg>()
        .expect("history 2");
    assert_eq!(sub.try_recv().expect("message 3").index, 3);
    assert_eq!(sub.try_recv().expect("message 4").index, 4);
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Empty);
    drop((p, sub));
    s.assert_gone(&name);
}

/// A subscriber that waits in slices shorter than its check period (as the Python bindings do,
/// to stay responsive to Ctrl-C) still learns that the publisher left: `Disconnected` after the
/// last message, not timeouts forever. (It looked only when a wait outlived the 50 ms check.)
#[test]
fn short_waits_still_see_the_publisher_leave() {
    let mut s = scope!("shortwait");
    let name = s.name();
    let sub = Topic::builder(&name)
        .capacity(64)
        .subscriber::<Msg>()
        .expect("subscriber");
    let mut publ = s.spawn("publisher", &["publish", "--topic", &name, "--count", "10"]);
    publ.finish("done", STEP);
    let started = std::time::Instant::now();
    let mut received = 0;
    loop {
        match sub.recv_timeout(Duration::from_millis(20)) {
            Ok(m) => {
                assert!(m.is_intact());
                received += 1;
            }
            Err(RecvError::Timeout) => {
                assert!(
                    started.elapsed() < STEP,
                    "only timeouts after the publisher left ({received} received)"
                );
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(received, 10, "every message before Disconnected");
}

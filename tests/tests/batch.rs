//! Copying and batched receives (`Subscriber::recv_each`, `try_recv_many`, `try_recv_copy`)
//! between processes: no slot is held, so a message can be overwritten while it is copied; the
//! copy must then be dropped and reported as lag, never handed over torn.

use shmbus_tests::{check_summary, scope, BULK, STEP};

/// Two publisher processes into one batched subscriber on a small back-pressure topic: every
/// message of both arrives intact, each publisher's in order, none lost, although the
/// subscriber stores its cursor once per batch (the publishers wait on that cursor).
#[test]
fn batched_copies_under_back_pressure_lose_nothing() {
    let mut s = scope!("batchbp");
    two_publishers_into_one(&mut s, 20_000, &["--batch", "32"], &[]);
}

/// Two publisher processes (`publish --count N` plus `publisher_args`) into one subscriber
/// process (`subscribe` plus `subscriber_args`) on a back-pressure topic of 8 entries: the
/// subscriber's summary, after checking that nothing was lost or reordered.
fn two_publishers_into_one(
    s: &mut shmbus_tests::Scope,
    n: u64,
    subscriber_args: &[&str],
    publisher_args: &[&str],
) {
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "back-pressure",
        "--capacity",
        "8",
        "--max-publishers",
        "2",
    ];
    let mut sub = s.spawn(
        "subscriber",
        &[&["subscribe"][..], subscriber_args, &topic].concat(),
    );
    sub.expect("ready", STEP);
    let count = n.to_string();
    let mut pubs: Vec<_> = (0..2)
        .map(|i| {
            s.spawn(
                &format!("publisher {i}"),
                &[&["publish", "--count", &count][..], publisher_args, &topic].concat(),
            )
        })
        .collect();
    for p in &mut pubs {
        assert_eq!(p.finish("done", BULK).num("sent"), n);
    }
    let summary = sub.finish("summary", BULK);
    let (received, lagged) = check_summary(&summary, 2 * n);
    assert_eq!(
        (received, lagged),
        (2 * n, 0),
        "back-pressure loses nothing: {}",
        summary.raw
    );
    s.assert_gone(&name);
}

/// A publisher process overwriting a ring of 2 as fast as it can, and a subscriber process
/// copying in batches as fast as it can: copies race overwrites all the time. Every message
/// handed over is intact (its checksum holds) and in order; the rest is reported as lag, and
/// received + lagged accounts for every message.
#[test]
fn copies_racing_overwrites_are_intact_or_lag() {
    copies_race_overwrites("msg", scope!("batchrace"));
}

/// The same with 48-byte messages, which ride in their ring entries: the copies are taken from
/// the entry being rewritten (seqlock), not from the slot.
#[test]
fn copies_from_entries_racing_overwrites_are_intact_or_lag() {
    copies_race_overwrites("compact", scope!("entryrace"));
}

fn copies_race_overwrites(msg_type: &str, mut s: shmbus_tests::Scope) {
    const N: u64 = 200_000;
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--type",
        msg_type,
        "--overflow",
        "overwrite",
        "--capacity",
        "2",
    ];
    let mut sub = s.spawn(
        "batched subscriber",
        &[&["subscribe", "--batch", "4"][..], &topic].concat(),
    );
    sub.expect("ready", STEP);
    let mut publ = s.spawn(
        "publisher",
        &[&["publish", "--count", &N.to_string()][..], &topic].concat(),
    );
    assert_eq!(publ.finish("done", BULK).num("sent"), N);
    let summary = sub.finish("summary", BULK);
    eprintln!("{}", summary.raw);
    // check_summary asserts no bad checksum, no bad order, no silent gap, and that received +
    // lagged is every message.
    let (received, _) = check_summary(&summary, N);
    assert!(
        received >= 2,
        "the last messages stay readable: {}",
        summary.raw
    );
    assert_eq!(summary.num("last_index"), N - 1, "{}", summary.raw);
    s.assert_gone(&name);
}

/// A slow batched subscriber on an overwrite topic lags, is told so, resumes, and receives the
/// last message.
#[test]
fn slow_batched_subscriber_lags_and_resumes() {
    const N: u64 = 1_000;
    let mut s = scope!("batchlag");
    let name = s.name();
    let topic = [
        "--topic",
        &name,
        "--overflow",
        "overwrite",
        "--capacity",
        "4",
    ];
    let mut sub = s.spawn(
        "slow subscriber",
        &[
            &["subscribe", "--batch", "3", "--sleep-us", "2000"][..],
            &topic,
        ]
        .concat(),
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
    let (_, lagged) = check_summary(&summary, N);
    assert!(
        lagged > 0 && summary.num("after_lag") > 0,
        "{}",
        summary.raw
    );
    assert_eq!(summary.num("last_index"), N - 1, "{}", summary.raw);
    s.assert_gone(&name);
}

/// Two publisher processes sending in batches (`send_many`, which wakes sleeping subscribers
/// once per batch and before it waits for room) into a subscriber that sleeps in a blocking
/// `recv` on a small back-pressure topic: nothing is lost or reordered. (A batch that waited for
/// room without waking the subscriber first would not hang here, only stall until the
/// subscriber's periodic 50 ms look; the loom model
/// `a_batch_waiting_for_room_wakes_the_subscriber_first` is what catches that.)
#[test]
fn batched_sends_wake_a_sleeping_subscriber_and_lose_nothing() {
    let mut s = scope!("sendmany");
    two_publishers_into_one(&mut s, 20_000, &["--timeout-ms", "0"], &["--batch", "20"]);
}

/// In one process, the batch paths message by message: runs longer than one run of the lean
/// path (32), a batch cut by `max`, a batch that ends before a lag and the lag reported next,
/// sequence numbers handed to `recv_each`; for messages in the entry's words (`u64`) and in
/// slots (`[u64; 8]`).
#[test]
fn batches_take_runs_end_before_a_lag_and_number_their_messages() {
    let mut s = scope!("batchruns");
    batch_paths::<u64>(&s.name(), |i| i, |m| *m);
    batch_paths::<[u64; 8]>(
        &s.name(),
        |i| [i; 8],
        |m| {
            assert!(m.iter().all(|&w| w == m[0]), "one message's words: {m:?}");
            m[0]
        },
    );
}

fn batch_paths<T: bytemuck::Pod + std::fmt::Debug>(
    name: &str,
    make: impl Fn(u64) -> T,
    value: impl Fn(&T) -> u64,
) {
    use shmbus::{Overflow, RecvError, Topic};
    const CAP: u64 = 64;
    let topic = Topic::builder(name)
        .capacity(CAP as u32)
        .overflow(Overflow::Overwrite);
    let sub = topic.subscriber::<T>().expect("subscriber");
    let mut publ = topic.publisher::<T>().expect("publisher");
    let mut out = Vec::new();
    assert!(matches!(
        sub.try_recv_many(&mut out, 10),
        Err(RecvError::Empty)
    ));
    for i in 0..50 {
        publ.send(make(i)).expect("send");
    }
    // Cut by `max`, then the rest in one batch of two runs.
    assert_eq!(sub.try_recv_many(&mut out, 5).expect("five"), 5);
    assert_eq!(sub.try_recv_many(&mut out, 1000).expect("the rest"), 45);
    let got: Vec<u64> = out.iter().map(&value).collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert!(matches!(
        sub.try_recv_many(&mut out, 10),
        Err(RecvError::Empty)
    ));
    // Overwrite a whole ring and more: the lag is reported alone, then the newest messages.
    for i in 50..50 + CAP + 10 {
        publ.send(make(i)).expect("send");
    }
    // (A reader learns of the loss entry by entry: several lags may add up to it.)
    out.clear();
    let mut lagged = 0;
    while lagged < 10 {
        match sub.try_recv_many(&mut out, 1000) {
            Err(RecvError::Lagged(n)) => lagged += n,
            other => panic!("expected lags first, got {other:?} after {lagged}"),
        }
        assert!(out.is_empty(), "nothing is appended with a lag");
    }
    assert_eq!(lagged, 10, "the ten overwritten");
    let mut seqs = Vec::new();
    let n = sub
        .recv_each(1000, Some(std::time::Duration::ZERO), |seq, m| {
            seqs.push((seq, value(&m)))
        })
        .expect("the newest ring");
    assert_eq!(n as u64, CAP);
    let want: Vec<(u64, u64)> = (60..60 + CAP).map(|i| (i, i)).collect();
    assert_eq!(seqs, want, "sequence numbers and values agree");
}

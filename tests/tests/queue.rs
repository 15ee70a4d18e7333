//! Work queues across processes: each item goes to exactly one consumer; a consumer or producer
//! SIGKILLed at a bad moment blocks nobody, and its items are accounted for (lost and counted at
//! most once, or delivered again when acknowledged).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use shmbus::{GetError, Queue, QueueBuilder};
use shmbus_tests::{scope, Line, Msg, Peer, Rng, Scope, BULK, STEP};

/// Every `got` line of a consumer: (producer, index) → deliveries seen, checking integrity.
fn record(lines: &[Line], seen: &mut HashMap<(u64, u64), Vec<u32>>) -> u64 {
    let mut n = 0;
    for l in lines.iter().filter(|l| l.tag == "got") {
        assert_eq!(l.get("intact"), "true", "{}", l.raw);
        seen.entry((l.num("producer"), l.num("index")))
            .or_default()
            .push(l.num("deliveries") as u32);
        n += 1;
    }
    n
}

fn consumer(s: &mut Scope, label: &str, name: &str, extra: &[&str]) -> Peer {
    let mut args = vec!["queue-get", "--name", name];
    args.extend_from_slice(extra);
    let mut p = s.spawn(label, &args);
    p.expect("ready", STEP);
    p
}

/// Two producer processes, three consumer processes, at most once: every item is received
/// exactly once, intact, and the queue's counters agree.
#[test]
fn each_item_goes_to_exactly_one_consumer_process() {
    let mut s = scope!("queue-each");
    let name = s.name();
    let q = QueueBuilder::new(&name).capacity(16).open::<Msg>().unwrap();
    let n = 2000u64;
    let mut consumers: Vec<Peer> = (0..3)
        .map(|i| consumer(&mut s, &format!("consumer {i}"), &name, &[]))
        .collect();
    let mut producers: Vec<Peer> = (0..2u64)
        .map(|p| {
            let (c, id) = (n.to_string(), p.to_string());
            s.spawn(
                &format!("producer {p}"),
                &[
                    "queue-put",
                    "--name",
                    &name,
                    "--count",
                    &c,
                    "--producer",
                    &id,
                ],
            )
        })
        .collect();
    for p in &mut producers {
        assert_eq!(p.finish("summary", BULK).num("put"), n);
    }
    q.close().unwrap();
    let mut seen = HashMap::new();
    let mut total = 0;
    for c in &mut consumers {
        let (status, lines) = c.wait_output(BULK);
        assert!(status.success());
        total += record(&lines, &mut seen);
    }
    assert_eq!(total, 2 * n);
    assert_eq!(seen.len() as u64, 2 * n, "each item exactly once");
    assert!(seen.values().all(|d| d == &[1]));
    let st = q.stats();
    assert_eq!(
        (st.put, st.taken, st.done, st.lost),
        (2 * n, 2 * n, 2 * n, 0)
    );
    assert!(matches!(q.try_get(), Err(GetError::Closed)));
    drop(q);
    s.assert_gone(&name);
}

/// Acknowledged: the items a consumer holds when it is killed are delivered again, to
/// another consumer, with a delivery count of 2; nothing is lost.
#[test]
fn a_killed_consumers_unacknowledged_items_are_delivered_again() {
    let mut s = scope!("queue-redeliver");
    let name = s.name();
    let q = QueueBuilder::new(&name)
        .capacity(16)
        .acknowledged(3)
        .open::<Msg>()
        .unwrap();
    for i in 0..10 {
        q.put(Msg::new(7, i)).unwrap();
    }
    let mut holder = consumer(&mut s, "holder", &name, &["--ack", "3", "--hold", "3"]);
    let held: Vec<u64> = (0..3)
        .map(|_| holder.expect("holding", STEP).num("index"))
        .collect();
    assert_eq!(held, vec![0, 1, 2]);
    assert_eq!(q.len(), 7);
    holder.kill();
    let mut worker = consumer(&mut s, "worker", &name, &["--ack", "3"]);
    // The worker finds the dead holder's items (it looks for dead participants while it
    // waits); then the queue is closed and drained.
    assert!(shmbus_tests::wait_until(STEP, || q.stats().done == 10));
    q.close().unwrap();
    let (status, lines) = worker.wait_output(STEP);
    assert!(status.success());
    let mut seen = HashMap::new();
    assert_eq!(record(&lines, &mut seen), 10);
    for i in 0..10 {
        let want: &[u32] = if i < 3 { &[2] } else { &[1] };
        assert_eq!(seen[&(7, i)], want, "item {i}");
    }
    let st = q.stats();
    assert_eq!(
        (st.done, st.redelivered, st.lost, st.dead_lettered),
        (10, 3, 0, 0)
    );
}

/// At most once: the items a consumer holds when it is killed are lost and counted; every
/// other item is delivered once.
#[test]
fn a_killed_consumers_items_are_lost_and_counted_at_most_once() {
    let mut s = scope!("queue-lost");
    let name = s.name();
    let q = QueueBuilder::new(&name).capacity(16).open::<Msg>().unwrap();
    for i in 0..10 {
        q.put(Msg::new(7, i)).unwrap();
    }
    let mut holder = consumer(&mut s, "holder", &name, &["--hold", "2"]);
    holder.expect("holding", STEP);
    holder.expect("holding", STEP);
    holder.kill();
    let mut worker = consumer(&mut s, "worker", &name, &[]);
    assert!(shmbus_tests::wait_until(STEP, || q.stats().lost == 2));
    assert!(shmbus_tests::wait_until(STEP, || q.stats().done == 8));
    q.close().unwrap();
    let (_, lines) = worker.wait_output(STEP);
    let mut seen = HashMap::new();
    assert_eq!(record(&lines, &mut seen), 8);
    assert!((2..10).all(|i| seen[&(7, i)] == [1]));
    let st = q.stats();
    assert_eq!((st.put, st.done, st.lost, st.redelivered), (10, 8, 2, 0));
}

/// Acknowledged, a delivery limit of 2: an item whose consumers keep dying is dead-lettered
/// after its second delivery, and the queue goes on.
#[test]
fn an_item_whose_consumers_keep_dying_is_dead_lettered() {
    let mut s = scope!("queue-dead-letter");
    let name = s.name();
    let q = QueueBuilder::new(&name)
        .capacity(4)
        .acknowledged(2)
        .open::<Msg>()
        .unwrap();
    q.put(Msg::new(1, 0)).unwrap();
    for round in 1..=2u64 {
        let mut h = consumer(&mut s, "holder", &name, &["--ack", "2", "--hold", "1"]);
        assert_eq!(h.expect("holding", STEP).num("deliveries"), round);
        h.kill();
        h.wait(STEP);
        q.reclaim_dead();
    }
    let st = q.stats();
    assert_eq!((st.dead_lettered, st.redelivered, st.done), (1, 1, 0));
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
    q.put(Msg::new(1, 1)).unwrap();
    assert_eq!(q.get().unwrap().index, 1);
}

/// Acknowledged, consumers SIGKILLed at random moments (and replaced) while a producer puts
/// thousands of items: every item is processed at least once, an item is processed twice only
/// when it was delivered again, at most one item per kill, and the counters are exact.
#[test]
fn consumers_killed_at_random_moments_lose_nothing_when_acknowledged() {
    let mut s = scope!("queue-random-kill");
    let name = s.name();
    let q = QueueBuilder::new(&name)
        .capacity(8)
        .acknowledged(100)
        .open::<Msg>()
        .unwrap();
    let n = 3000u64;
    let mut rng = Rng::from_env_or_clock();
    let args = ["--ack", "100", "--work-us", "50"];
    let mut live: Vec<Peer> = (0..3)
        .map(|i| consumer(&mut s, &format!("consumer {i}"), &name, &args))
        .collect();
    let mut seen = HashMap::new();
    let mut kills = 0;
    for i in 0..n {
        q.put(Msg::new(3, i)).unwrap();
        if i % 500 == 250 {
            std::thread::sleep(Duration::from_micros(rng.range(0, 2000)));
            let k = rng.range(0, live.len() as u64) as usize;
            let mut victim = live.swap_remove(k);
            victim.kill();
            let (_, lines) = victim.wait_output(STEP);
            record(&lines, &mut seen);
            kills += 1;
            live.push(consumer(
                &mut s,
                &format!("replacement {kills}"),
                &name,
                &args,
            ));
        }
    }
    assert!(shmbus_tests::wait_until(BULK, || q.stats().done == n));
    q.close().unwrap();
    for mut c in live {
        let (status, lines) = c.wait_output(BULK);
        assert!(status.success());
        record(&lines, &mut seen);
    }
    assert_eq!(seen.len() as u64, n, "every item processed at least once");
    let mut twice = 0;
    for (k, d) in &seen {
        if d.len() > 1 {
            twice += d.len() - 1;
            assert!(
                d.iter().any(|&x| x > 1),
                "{k:?} processed twice without a redelivery"
            );
        }
    }
    assert!(twice <= kills, "{twice} duplicates after {kills} kills");
    let st = q.stats();
    assert_eq!(st.done, n, "acknowledged exactly once each");
    assert_eq!(st.put, n);
    assert_eq!(
        st.taken,
        n + st.redelivered,
        "every redelivery is one more delivery"
    );
    assert!(st.redelivered <= kills as u64);
    assert_eq!((st.lost, st.dead_lettered), (0, 0));
}

/// Producers SIGKILLed at random moments while putting flat out: nobody blocks, every item a
/// producer was told was put is received exactly once, a dead producer's reservation is freed,
/// and the queue keeps working at full capacity.
#[test]
fn producers_killed_mid_put_block_nobody() {
    let mut s = scope!("queue-producer-kill");
    let name = s.name();
    let q: Queue<Msg> = QueueBuilder::new(&name).capacity(4).open().unwrap();
    let mut rng = Rng::from_env_or_clock();
    let mut got = HashMap::<(u64, u64), u32>::new();
    let mut told = 0u64;
    for p in 0..4u64 {
        let id = p.to_string();
        let mut producer = s.spawn(
            &format!("producer {p}"),
            &["queue-put", "--name", &name, "--producer", &id, "--verbose"],
        );
        producer.expect("ready", STEP);
        let until = std::time::Instant::now() + Duration::from_millis(rng.range(20, 80));
        while std::time::Instant::now() < until {
            if let Ok(m) = q.get_timeout(Duration::from_millis(10)) {
                assert!(m.is_intact());
                *got.entry((m.producer, m.index)).or_default() += 1;
            }
        }
        producer.kill();
        let (_, lines) = producer.wait_output(STEP);
        told += lines.iter().filter(|l| l.tag == "put").count() as u64;
    }
    // Drain; then the whole capacity is usable again (dead reservations were freed).
    q.reclaim_dead();
    while let Ok(m) = q.try_get() {
        *got.entry((m.producer, m.index)).or_default() += 1;
    }
    assert!(got.values().all(|&c| c == 1), "no item twice");
    let st = q.stats();
    assert_eq!(st.put, got.len() as u64, "every committed item received");
    assert!(
        got.len() as u64 >= told && got.len() as u64 <= told + 4,
        "{} received, producers reported {told}",
        got.len()
    );
    for i in 0..4 {
        q.try_put(Msg::new(9, i))
            .expect("the whole capacity is free");
    }
    assert!(q.try_put(Msg::new(9, 4)).is_err());
}

/// A peer that scribbles random bytes over a queue's words, slot table, rings and rows (not the
/// mutex: a scribbled pthread mutex is outside the trust model) while this process keeps putting
/// and getting: every call returns (an item, or an error such as `Corrupt`), nothing panics or
/// hangs.
#[test]
fn scribbled_queue_memory_never_panics_or_hangs() {
    use std::os::unix::fs::FileExt;
    let mut s = scope!("queue-scribble");
    let name = s.name();
    let q = QueueBuilder::new(&name).capacity(8).open::<Msg>().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(shmbus_tests::shm_file(&name))
        .unwrap();
    let header = shmbus_core::wire::HEADER_SIZE as u64;
    // Everything between the mutex and the data: words, journal, slot table, rings, rows.
    let (from, to) = (64u64, 320 + 8 * 16 + 8 * 4 * 2 + 32 * 4);
    let mut rng = Rng::from_env_or_clock();
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    let mut outcomes = HashMap::<&str, u64>::new();
    while std::time::Instant::now() < deadline {
        let at = header + rng.range(from, to);
        let junk = rng.next_u64().to_ne_bytes();
        let n = rng.range(1, 9) as usize;
        // Spare the `closed` word (payload 104..108), or the run would soon only see `Closed`.
        if at + n as u64 > header + 104 && at < header + 108 {
            continue;
        }
        file.write_at(&junk[..n], at).unwrap();
        let put = match q.try_put(Msg::new(1, 1)) {
            Ok(()) => "put",
            Err(_) => "put-error",
        };
        let get = match q.try_get() {
            Ok(_) => "got",
            Err(GetError::Empty) => "empty",
            Err(GetError::Closed) => "closed",
            Err(_) => "get-error",
        };
        *outcomes.entry(put).or_default() += 1;
        *outcomes.entry(get).or_default() += 1;
        let _ = q.len();
        q.reclaim_dead();
    }
    assert!(!outcomes.is_empty(), "{outcomes:?}");
    eprintln!("outcomes under scribbling: {outcomes:?}");
    drop(q);
    s.assert_gone(&name);
}
